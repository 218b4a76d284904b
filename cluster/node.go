package cluster

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/internal/clock"
)

// maxAttempts bounds every compare-and-set loop: past it the operation is
// refused with ErrContention rather than spinning.
const maxAttempts = 64

// Node is one creditgate process's membership in the cluster: its etcd
// lease, its epoch, and the local lease deadline.
//
// Fencing rule: every write a Node makes is one etcd transaction whose first
// comparison is that members/<epoch> still exists with the create revision
// of this node's join. That key is bound to the node's lease, so once etcd
// has revoked or expired the lease, no write of this incarnation can land
// (ErrFenced), however late it arrives.
//
// Local deadline: the send time of the last acknowledged keepalive plus the
// TTL etcd granted, minus Config.Margin. etcd expires the lease no earlier
// than TTL after it received that keepalive, which is after it was sent, so
// the node stops selling (Sellable) before any peer may act on its death.
// No synchronised clocks are needed: only this node's clock rate.
type Node struct {
	cfg   Config
	cli   *clientv3.Client
	clk   clock.Clock
	k     keys
	lease clientv3.LeaseID
	epoch int64
	// joinRev is the create revision of members/<epoch>: the fence.
	joinRev int64

	mu       sync.Mutex
	deadline time.Time // guarded by mu
	lost     bool      // guarded by mu; the lease is known gone

	// rejoin is what ClaimOwn found of earlier incarnations (rejoin.go);
	// nil if it was not called. Set before NewBooks, read-only after.
	rejoin *Rejoin

	stop context.CancelFunc
	wg   sync.WaitGroup
}

// Join grants a lease, takes the next epoch and registers the node under it,
// all in one transaction, then starts the keepalive loop. Close stops it.
func Join(ctx context.Context, cli *clientv3.Client, cfg Config, clk clock.Clock) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, cli: cli, clk: clk, k: keys{cfg.Prefix}}
	sent := clk.Now()
	gctx, cancel := context.WithTimeout(ctx, cfg.OpTimeout)
	g, err := cli.Grant(gctx, int64(cfg.LeaseTTL/time.Second))
	cancel()
	if err != nil {
		return nil, fmt.Errorf("cluster join %s: grant lease: %w", cfg.NodeID, err)
	}
	n.lease = g.ID
	n.deadline = sent.Add(time.Duration(g.TTL)*time.Second - cfg.Margin)
	if err := n.takeEpoch(ctx); err != nil {
		rctx, cancel := context.WithTimeout(context.Background(), cfg.OpTimeout)
		defer cancel()
		cli.Revoke(rctx, n.lease) // best effort: the lease expires anyway
		return nil, err
	}
	lctx, stop := context.WithCancel(context.Background())
	n.stop = stop
	n.wg.Add(1)
	go n.keepAlive(lctx)
	return n, nil
}

// takeEpoch increments the epoch counter and creates members/<epoch> on the
// node's lease in one compare-and-set transaction.
func (n *Node) takeEpoch(ctx context.Context) error {
	for attempt := 0; attempt < maxAttempts; attempt++ {
		ctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
		cur, err := n.cli.Get(ctx, n.k.epoch())
		if err != nil {
			cancel()
			return fmt.Errorf("cluster join %s: read epoch: %w", n.cfg.NodeID, err)
		}
		var last, rev int64
		if len(cur.Kvs) == 1 {
			last, err = strconv.ParseInt(string(cur.Kvs[0].Value), 10, 64)
			if err != nil {
				cancel()
				return fmt.Errorf("cluster join %s: epoch %q: %w", n.cfg.NodeID, cur.Kvs[0].Value, err)
			}
			rev = cur.Kvs[0].ModRevision
		}
		next := last + 1
		resp, err := n.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(n.k.epoch()), "=", rev)).
			Then(
				clientv3.OpPut(n.k.epoch(), strconv.FormatInt(next, 10)),
				clientv3.OpPut(n.k.member(next), n.cfg.NodeID, clientv3.WithLease(n.lease)),
			).Commit()
		cancel()
		if err != nil {
			return fmt.Errorf("cluster join %s: take epoch: %w", n.cfg.NodeID, err)
		}
		if resp.Succeeded {
			n.epoch, n.joinRev = next, resp.Header.Revision
			return nil
		}
	}
	return fmt.Errorf("cluster join %s: take epoch: %w", n.cfg.NodeID, ErrContention)
}

// ID is the node's id; Epoch its incarnation, larger than every earlier
// incarnation's of any node.
func (n *Node) ID() string   { return n.cfg.NodeID }
func (n *Node) Epoch() int64 { return n.epoch }

// Lease is the node's etcd lease.
func (n *Node) Lease() clientv3.LeaseID { return n.lease }

// Deadline is the local lease deadline: the node sells nothing at or after it.
func (n *Node) Deadline() time.Time {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.deadline
}

// Sellable says whether the node may sell now (hold a new increment from a
// slice): nil before the local lease deadline, ErrLeaseDeadline after it,
// ErrFenced once the lease is known gone.
func (n *Node) Sellable() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.lost {
		return ErrFenced
	}
	if !n.clk.Now().Before(n.deadline) {
		return ErrLeaseDeadline
	}
	return nil
}

// keepAlive renews the lease every KeepAliveEvery (on the node's clock) and
// moves the deadline on each acknowledgement. It ends when Close cancels ctx
// or when etcd says the lease is gone.
func (n *Node) keepAlive(ctx context.Context) {
	defer n.wg.Done()
	tick := make(chan struct{}, 1)
	for {
		t := n.clk.AfterFunc(n.cfg.KeepAliveEvery, func() {
			select {
			case tick <- struct{}{}:
			default:
			}
		})
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-tick:
		}
		sent := n.clk.Now()
		rctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
		resp, err := n.cli.KeepAliveOnce(rctx, n.lease)
		cancel()
		switch {
		case errors.Is(err, rpctypes.ErrLeaseNotFound) || (err == nil && resp.TTL <= 0):
			n.mu.Lock()
			n.lost = true
			n.mu.Unlock()
			return
		case err != nil:
			// Not acknowledged: the deadline stays where it was and
			// lapses if etcd stays out of reach.
			continue
		}
		n.mu.Lock()
		if d := sent.Add(time.Duration(resp.TTL)*time.Second - n.cfg.Margin); d.After(n.deadline) {
			n.deadline = d
		}
		n.mu.Unlock()
	}
}

// stopKeepAlive ends the keepalive loop and waits for it, leaving the lease
// to expire: what a paused or partitioned node looks like to etcd.
func (n *Node) stopKeepAlive() {
	n.stop()
	n.wg.Wait()
}

// Close stops the keepalive loop, waits for it, and revokes the lease (a
// clean leave: the node's slices become reclaimable at once). Return the
// slices first to give their money back without a reclaim.
func (n *Node) Close(ctx context.Context) error {
	n.stopKeepAlive()
	ctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
	defer cancel()
	if _, err := n.cli.Revoke(ctx, n.lease); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("cluster leave %s: revoke lease: %w", n.cfg.NodeID, err)
	}
	return nil
}

// fence is the comparison every write of this node starts with.
func (n *Node) fence() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(n.k.member(n.epoch)), "=", n.joinRev)
}

// fenced reports whether a failed transaction failed on the fence: its Else
// branch's first operation is always a read of members/<epoch>.
func (n *Node) fenced(resp *clientv3.TxnResponse) bool {
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 || kvs[0].CreateRevision != n.joinRev {
		n.mu.Lock()
		n.lost = true
		n.mu.Unlock()
		return true
	}
	return false
}

// commit runs one fenced transaction: If(fence, cmps...) Then(ops...),
// with the fence key read in the Else branch. It returns ok=false when a
// comparison other than the fence failed (the caller re-reads and retries).
func (n *Node) commit(ctx context.Context, cmps []clientv3.Cmp, ops []clientv3.Op) (ok bool, rev int64, err error) {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
	defer cancel()
	resp, err := n.cli.Txn(ctx).
		If(append([]clientv3.Cmp{n.fence()}, cmps...)...).
		Then(ops...).
		Else(clientv3.OpGet(n.k.member(n.epoch))).
		Commit()
	if err != nil {
		return false, 0, err
	}
	if resp.Succeeded {
		return true, resp.Header.Revision, nil
	}
	if n.fenced(resp) {
		return false, 0, ErrFenced
	}
	return false, 0, nil
}
