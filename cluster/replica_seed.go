package cluster

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/ledger"
)

// ErrConfigExists: Seed was asked to fill a shared configuration that is
// not empty (or that another node is seeding).
var ErrConfigExists = errors.New("cluster: the shared configuration in etcd is not empty")

// ErrUnseeded: NewReplica found no shared configuration in etcd but a
// local ledger that holds one; applying the empty one would delete it, so
// the replica refuses to start. Seed etcd from that ledger first (Seed), or
// start the node on an empty ledger.
var ErrUnseeded = errors.New("cluster: the shared configuration in etcd is empty but the local ledger holds one")

// seedKey marks a seed in progress or done: the seeding node's id.
func (k keys) seed() string { return k.prefix + "seed" }

// Seed copies a ledger's configuration — orgs' settings, trunks, users,
// toll-free numbers, the rate deck; no money — into an etcd whose shared
// configuration is empty: how a single-node installation becomes the first
// node of a cluster. It first claims the seed (one transaction: config/
// empty and no seed key), so of several nodes seeding at once one does and
// the others get ErrConfigExists; then writes the records in fenced
// transactions of at most maxTxnOps operations, each compared on the
// claim. It returns how many records it wrote. A seed cut short (etcd
// lost, node fenced) leaves a partial configuration: delete <prefix>config/,
// <prefix>index/, <prefix>deck/ and <prefix>seed with etcdctl before
// seeding again.
func Seed(ctx context.Context, n *Node, local *ledger.Ledger) (int, error) {
	seed := n.k.seed()
	ok, rev, err := n.commit(ctx,
		[]clientv3.Cmp{
			clientv3.Compare(clientv3.Version(n.k.config()), "=", 0).WithPrefix(),
			clientv3.Compare(clientv3.CreateRevision(seed), "=", 0),
		},
		[]clientv3.Op{clientv3.OpPut(seed, n.ID())})
	if err != nil {
		return 0, fmt.Errorf("cluster seed: %w", err)
	}
	if !ok {
		return 0, fmt.Errorf("cluster seed: %w", ErrConfigExists)
	}
	claim := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(seed), "=", rev)}
	return copyConfig(ctx, n, local, claim, false)
}

// copyConfig writes the ledger's configuration records into etcd, each
// transaction compared on claim (the seed key's create revision), and
// returns how many records it wrote. Every write is a put of the record
// as the ledger has it, so writing again after a cut-short run writes the
// same records (SeedCluster resumes that way). withKeys adds the API keys
// (config/key/<id>: hashes, never secrets). The rate deck's chunks are
// written only when config/deck does not already point at the same deck
// (a resumed run); an earlier run's chunks that no pointer names cost
// space only.
func copyConfig(ctx context.Context, n *Node, local *ledger.Ledger, claim []clientv3.Cmp, withKeys bool) (int, error) {
	var ops []clientv3.Op
	written := 0
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		ok, _, err := n.commit(ctx, claim, ops)
		switch {
		case err != nil:
			return fmt.Errorf("cluster seed: %w", err)
		case !ok:
			return fmt.Errorf("cluster seed: the seed key changed under it: %w", ErrConfigExists)
		}
		ops = ops[:0]
		return nil
	}
	// add queues one record's operations, all in one transaction.
	add := func(rec ...clientv3.Op) error {
		if len(ops)+len(rec) > maxTxnOps {
			if err := flush(); err != nil {
				return err
			}
		}
		ops = append(ops, rec...)
		written++
		return nil
	}
	for _, id := range local.OrgIDs() {
		o, err := local.Org(id)
		if err != nil {
			return written, fmt.Errorf("cluster seed: %w", err)
		}
		if err := add(clientv3.OpPut(n.k.cfgOrg(id), orgRecord(o))); err != nil {
			return written, err
		}
	}
	for _, tr := range local.Trunks() {
		if err := add(clientv3.OpPut(n.k.cfgTrunk(tr.ID), encode(tr))); err != nil {
			return written, err
		}
	}
	for _, u := range local.UsersAll() {
		rec := []clientv3.Op{clientv3.OpPut(n.k.cfgUser(u.Org, u.ID), encode(u))}
		for _, num := range u.Numbers {
			rec = append(rec, clientv3.OpPut(n.k.number(num), "u:"+u.Org+"/"+u.ID))
		}
		if err := add(rec...); err != nil {
			return written, err
		}
	}
	for _, tf := range local.TollFreeAll() {
		rec := []clientv3.Op{clientv3.OpPut(n.k.cfgTollFree(tf.Number), encode(tf)), clientv3.OpPut(n.k.number(tf.Number), "t:"+tf.Org)}
		if tf.Trunk != "" {
			rec = append(rec, clientv3.OpPut(n.k.delivery(tf.Trunk, tf.Number), ""))
		}
		if err := add(rec...); err != nil {
			return written, err
		}
	}
	if withKeys {
		for _, k := range local.Keys() {
			if err := add(clientv3.OpPut(n.k.cfgKey(k.ID), encode(k))); err != nil {
				return written, err
			}
		}
	}
	if deck := local.Deck(); deck != nil {
		if err := flush(); err != nil {
			return written, err
		}
		if same, err := sameDeck(ctx, n, deck); err != nil || same {
			if err != nil {
				return written, fmt.Errorf("cluster seed: rate deck: %w", err)
			}
			return written, nil
		}
		ptr, err := writeDeckChunks(ctx, n, deck)
		if err != nil {
			return written, fmt.Errorf("cluster seed: rate deck: %w", err)
		}
		if err := add(clientv3.OpPut(n.k.cfgDeck(), encode(ptr))); err != nil {
			return written, err
		}
	}
	return written, flush()
}
