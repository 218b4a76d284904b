package cluster

import (
	"context"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A prefix read in pages, each its own request: a read of a prefix that
// grows with the calls up or the orgs (takeover records, accounts) must not
// become one response beyond etcd's request size limit. Pages are not one
// revision: callers decide on each key's own value and mod revision.

// eachKV pages through a prefix (500 keys a request).
func (n *Node) eachKV(ctx context.Context, prefix string, keysOnly bool, fn func(*mvccpb.KeyValue) error) error {
	end := clientv3.GetPrefixRangeEnd(prefix)
	from := prefix
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(500)}
		if keysOnly {
			opts = append(opts, clientv3.WithKeysOnly())
		}
		rctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
		resp, err := n.cli.Get(rctx, from, opts...)
		cancel()
		if err != nil {
			return err
		}
		for _, kv := range resp.Kvs {
			if err := fn(kv); err != nil {
				return err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}
