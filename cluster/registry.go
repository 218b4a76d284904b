package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// The registry of nodes' admin APIs, so that any node can answer a read for
// the whole cluster (GET /v1/calls, DELETE /v1/calls/{id}, usage) by asking
// its peers.
//
//	admin/<epoch>   {"node": id, "admin_url": "http://host:port"}, on the
//	                node's lease
//
//	nodes/<id>      {"node": id, "admin_url": ...}, no lease: every node
//	                that ever registered, so a read can say whose history
//	                is missing once a node is gone
//
// The admin key is keyed by epoch, not node id, and lives on the lease like
// members/<epoch>: a node that dies, is paused past its TTL or leaves
// disappears from the live registry when etcd ends its lease, with nothing
// to clean up. A node restarted before its earlier incarnation's lease
// expired is listed twice for a moment; Peers keeps the newest epoch of each
// node id. nodes/<id> stays: a node that is down keeps its CDRs,
// transactions and audit entries on its own disk, and a cluster-wide read
// must name it rather than leave its part out without a word. An operator
// who retires a node for good deletes its nodes/<id> (README).

// maxPeers bounds what Peers reads: far more nodes than one etcd cluster's
// money of record could serve (README, Capacity).
const maxPeers = 1024

// Peer is another node's admin API: live, or Down (registered once, no
// live lease now: nothing to ask, its history is out of reach).
type Peer struct {
	NodeID   string `json:"node"`
	Epoch    int64  `json:"-"`
	AdminURL string `json:"admin_url"`
	Down     bool   `json:"-"`
}

func (k keys) admin(epoch int64) string   { return fmt.Sprintf("%sadmin/%020d", k.prefix, epoch) }
func (k keys) admins() string             { return k.prefix + "admin/" }
func (k keys) knownNode(id string) string { return k.prefix + "nodes/" + id }
func (k keys) knownNodes() string         { return k.prefix + "nodes/" }

// CheckAdminURL refuses what peers could not call: anything but an
// http(s)://host:port base URL without a path, query or credentials.
func CheckAdminURL(adminURL string) error {
	u, err := url.Parse(adminURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" || u.Port() == "" ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("admin URL %q: want http(s)://host:port: %w", adminURL, ErrInvalid)
	}
	return nil
}

// Register publishes this node's admin API base URL under its lease, in a
// fenced transaction (a fenced node cannot register). Registering again
// replaces the URL.
func (n *Node) Register(ctx context.Context, adminURL string) error {
	if err := CheckAdminURL(adminURL); err != nil {
		return err
	}
	v, err := json.Marshal(Peer{NodeID: n.cfg.NodeID, AdminURL: strings.TrimSuffix(adminURL, "/")})
	if err != nil {
		return err
	}
	ok, _, err := n.commit(ctx, nil, []clientv3.Op{
		clientv3.OpPut(n.k.admin(n.epoch), string(v), clientv3.WithLease(n.lease)),
		clientv3.OpPut(n.k.knownNode(n.cfg.NodeID), string(v)),
	})
	if err != nil {
		return fmt.Errorf("cluster register %s: %w", n.cfg.NodeID, err)
	}
	if !ok {
		// No comparison but the fence, and commit reports the fence.
		return fmt.Errorf("cluster register %s: transaction refused", n.cfg.NodeID)
	}
	return nil
}

// Peers lists the nodes other than this one that registered an admin URL,
// ordered by node id: one entry per node id (a live one's newest epoch),
// none for this node's id; a node registered once whose lease is gone is
// listed Down. Both prefixes are read in one transaction, so a node is
// never seen both gone from nodes/ and alive. A read, not fenced: a fenced
// node may still ask.
func (n *Node) Peers(ctx context.Context) ([]Peer, error) {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
	defer cancel()
	tr, err := n.cli.Txn(ctx).Then(
		clientv3.OpGet(n.k.admins(), clientv3.WithPrefix(), clientv3.WithLimit(maxPeers)),
		clientv3.OpGet(n.k.knownNodes(), clientv3.WithPrefix(), clientv3.WithLimit(maxPeers)),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("cluster peers: %w", err)
	}
	resp := tr.Responses[0].GetResponseRange()
	newest := map[string]Peer{}
	for _, kv := range resp.Kvs {
		epoch, err := strconv.ParseInt(strings.TrimPrefix(string(kv.Key), n.k.admins()), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("cluster peers: key %q: %w", kv.Key, err)
		}
		var p Peer
		if err := json.Unmarshal(kv.Value, &p); err != nil {
			return nil, fmt.Errorf("cluster peers: %s: %w", kv.Key, err)
		}
		p.Epoch = epoch
		if p.NodeID == n.cfg.NodeID {
			continue
		}
		if old, ok := newest[p.NodeID]; !ok || old.Epoch < epoch {
			newest[p.NodeID] = p
		}
	}
	for _, kv := range tr.Responses[1].GetResponseRange().Kvs {
		var p Peer
		if err := json.Unmarshal(kv.Value, &p); err != nil {
			return nil, fmt.Errorf("cluster peers: %s: %w", kv.Key, err)
		}
		if _, live := newest[p.NodeID]; live || p.NodeID == n.cfg.NodeID {
			continue
		}
		p.Down = true
		newest[p.NodeID] = p
	}
	out := make([]Peer, 0, len(newest))
	for _, p := range newest {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].NodeID < out[j].NodeID })
	return out, nil
}
