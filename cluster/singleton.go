// Singletons: work that runs on exactly one node of the cluster at a time
// (the auto-recharge payer, the notification sender), chosen in etcd.

package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/internal/clock"
)

// singleton/<name> is the leadership key: the leader's node id and epoch,
// created on the leader's lease.
func (k keys) singleton(name string) string { return k.prefix + "singleton/" + name }

// Singleton runs one piece of work on exactly one node: the node that
// created singleton/<name>, bound to its own lease, in a fenced
// create-if-absent transaction. The others watch the key and try again
// when etcd deletes it (the leader's lease revoked or expired, or the
// leader resigned).
//
// (etcd's concurrency.Election is the same idea, but its Session renews
// the lease on its own and revokes it when closed: on the node's lease it
// would keep a paused node's lease alive behind the node's keepalive, the
// lease its deadline and fencing are built on, and closing it would end
// the node's membership.)
//
// Safety: the leader stops its work (its context cancelled, and waited
// for) as soon as any of these is seen —
//
//   - its key deleted or replaced (a watch event): the lease is gone;
//   - the node's local lease deadline passed, or the node fenced
//     (Node.Sellable, checked every KeepAliveEvery on the node's clock):
//     etcd may be about to expire the lease, and the deadline passes before
//     etcd can (see Node), so the work has stopped before a peer can take
//     the key over. A leader that keeps its lease after a lapse (etcd came
//     back in time) finds its own key on its lease and leads again.
//
// Every write the work makes is a fenced transaction of the node (ErrFenced
// once the lease is gone) and what it writes is idempotent (purchases,
// fundings and notifications carry their own ids), so the short overlap a
// deposed leader might still have in flight changes nothing twice.
//
// Invariants: at most one Singleton per name per Node; while Leading() is
// true the work's goroutine is running or about to; after Close returns no
// goroutine of the Singleton runs and, if it led, the key is deleted (a
// peer takes over at once rather than after the lease TTL).
type Singleton struct {
	n    *Node
	name string
	clk  clock.Clock
	log  *slog.Logger
	work func(ctx context.Context)

	leading atomic.Bool
	terms   atomic.Int64 // how many times this node became leader

	stop context.CancelFunc
	wg   sync.WaitGroup
}

// RunSingleton starts campaigning for name (letters, digits, '-', '_')
// and runs work, on this node, whenever it leads; work must return soon
// after its context ends. Close stops it.
func (n *Node) RunSingleton(name string, clk clock.Clock, log *slog.Logger, work func(ctx context.Context)) (*Singleton, error) {
	if err := validID("singleton", name); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	ctx, stop := context.WithCancel(context.Background())
	s := &Singleton{n: n, name: name, clk: clk, log: log.With("singleton", name), work: work, stop: stop}
	s.wg.Add(1)
	go s.campaign(ctx)
	return s, nil
}

// Name is the singleton's name.
func (s *Singleton) Name() string { return s.name }

// Leading says whether this node runs the work now.
func (s *Singleton) Leading() bool { return s.leading.Load() }

// Terms is how many times this node has become the leader.
func (s *Singleton) Terms() int64 { return s.terms.Load() }

// Close stops campaigning; a leader stops its work, waits for it and
// deletes its key so a peer takes over at once.
func (s *Singleton) Close() {
	s.stop()
	s.wg.Wait()
}

// campaign is the singleton's one goroutine: try to take the key; lead
// while it is ours; otherwise wait for it to go.
func (s *Singleton) campaign(ctx context.Context) {
	defer s.wg.Done()
	key := s.n.k.singleton(s.name)
	value := fmt.Sprintf("%s/%d", s.n.ID(), s.n.Epoch())
	for ctx.Err() == nil {
		if errors.Is(s.n.Sellable(), ErrFenced) {
			// This incarnation can never write again, so never lead:
			// the process must rejoin (a new Node, a new Singleton).
			s.log.Warn("singleton: node fenced; no longer campaigning")
			return
		}
		rev, leader, err := s.take(ctx, key, value)
		switch {
		case err != nil:
			if ctx.Err() == nil {
				s.log.Warn("singleton: campaign failed; retrying", "err", err)
			}
			s.sleep(ctx, s.n.cfg.KeepAliveEvery)
		case s.n.Sellable() != nil:
			// Past the local deadline: do not lead now, a lapse may be
			// about to end this lease (a key of ours waits for us).
			s.sleep(ctx, s.n.cfg.KeepAliveEvery)
		case leader != nil && leader.Lease == int64(s.n.lease):
			s.lead(ctx, key, leader.CreateRevision, rev)
			// Not straight back: work that returned on its own would
			// spin. Peers take over meanwhile if the lease is gone.
			s.sleep(ctx, s.n.cfg.KeepAliveEvery)
		case leader != nil:
			s.await(ctx, key, rev)
		}
	}
}

// take creates key on the node's lease if it is absent (fenced), and
// returns the key as it is after that (nil when absent and the node may not
// sell) and the revision it was read at.
func (s *Singleton) take(ctx context.Context, key, value string) (rev int64, leader *mvccpb.KeyValue, err error) {
	if s.n.Sellable() == nil {
		if _, _, err := s.n.commit(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", 0)},
			[]clientv3.Op{clientv3.OpPut(key, value, clientv3.WithLease(s.n.lease))}); err != nil {
			return 0, nil, err
		}
	}
	gctx, cancel := context.WithTimeout(ctx, s.n.cfg.OpTimeout)
	defer cancel()
	resp, err := s.n.cli.Get(gctx, key)
	if err != nil {
		return 0, nil, err
	}
	if len(resp.Kvs) == 1 {
		leader = resp.Kvs[0]
	}
	return resp.Header.Revision, leader, nil
}

// lead runs the work while the key created at createRev (as read at
// revision rev) is this node's and the node may sell; then stops it,
// waits, and gives the key up if the singleton is closing.
func (s *Singleton) lead(ctx context.Context, key string, createRev, rev int64) {
	wctx, stopWork := context.WithCancel(ctx)
	defer stopWork()
	s.leading.Store(true)
	s.terms.Add(1)
	s.log.Info("singleton: leading", "node", s.n.ID(), "epoch", s.n.Epoch())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.work(wctx) // the payer and notifier contain their own items' panics

	}()
	why := s.watchLead(wctx, key, createRev, rev, done)
	stopWork()
	<-done
	s.leading.Store(false)
	s.log.Info("singleton: stopped leading", "reason", why)
	if ctx.Err() != nil {
		// Closing: give the key up (only if it is still this term's).
		dctx, cancel := context.WithTimeout(context.Background(), s.n.cfg.OpTimeout)
		defer cancel()
		_, _, _ = s.n.commit(dctx, []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", createRev)},
			[]clientv3.Op{clientv3.OpDelete(key)})
	}
}

// watchLead returns, with the reason, when the leader must stop: its key
// gone or changed after revision rev, the node not selling (deadline or
// fenced), the work returned on its own, or ctx ended.
func (s *Singleton) watchLead(ctx context.Context, key string, createRev, rev int64, done <-chan struct{}) string {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// From the revision the key was read at (not its creation, which etcd
	// may have compacted since: a leader that keeps its key across a
	// lapse leads again from a later read).
	events := s.n.cli.Watch(clientv3.WithRequireLeader(wctx), key, clientv3.WithRev(rev+1))
	tick := make(chan struct{}, 1)
	for {
		t := s.clk.AfterFunc(s.n.cfg.KeepAliveEvery, func() {
			select {
			case tick <- struct{}{}:
			default:
			}
		})
		select {
		case <-ctx.Done():
			t.Stop()
			return "closing"
		case <-done:
			t.Stop()
			return "work returned"
		case resp, ok := <-events:
			t.Stop()
			if !ok || resp.Err() != nil {
				// The watch broke (etcd out of reach, compaction):
				// the key's fate is unknown, so stop; the campaign
				// reads it again and leads again if it is still ours.
				return "watch ended"
			}
			for _, ev := range resp.Events {
				if ev.Type == clientv3.EventTypeDelete || ev.Kv.CreateRevision != createRev {
					return "key gone (lease revoked or expired)"
				}
			}
		case <-tick:
			if err := s.n.Sellable(); err != nil {
				return err.Error()
			}
		}
	}
}

// await returns when key (read at rev) is deleted, or after a lease TTL at
// the latest (a missed event costs at most that), or when ctx ends.
func (s *Singleton) await(ctx context.Context, key string, rev int64) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	t := s.clk.AfterFunc(s.n.cfg.LeaseTTL, cancel)
	defer t.Stop()
	for resp := range s.n.cli.Watch(clientv3.WithRequireLeader(wctx), key, clientv3.WithRev(rev+1)) {
		if resp.Err() != nil {
			return
		}
		for _, ev := range resp.Events {
			if ev.Type == clientv3.EventTypeDelete {
				return
			}
		}
	}
}

// sleep waits d on the singleton's clock, or until ctx ends.
func (s *Singleton) sleep(ctx context.Context, d time.Duration) {
	wake := make(chan struct{})
	t := s.clk.AfterFunc(d, func() { close(wake) })
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-wake:
	}
}

// singletonCollector exports creditgate_cluster_singleton_leader{name}.
type singletonCollector struct {
	ss     []*Singleton
	leader *prometheus.Desc
}

// NewSingletonCollector is the Prometheus collector of node n's
// singletons: creditgate_cluster_singleton_leader{node, name}, 1 on the
// node that runs the singleton, 0 on the others (summed over the nodes,
// 1 when the cluster has its leader, 0 during a takeover).
func NewSingletonCollector(n *Node, ss ...*Singleton) prometheus.Collector {
	return &singletonCollector{ss: ss, leader: prometheus.NewDesc("creditgate_cluster_singleton_leader",
		"1 while this node runs the named singleton (payer, notifier), 0 otherwise; summed over the nodes it is 1 once a leader is elected.",
		[]string{"name"}, prometheus.Labels{"node": n.ID()})}
}

func (c *singletonCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.leader }

func (c *singletonCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.ss {
		ch <- prometheus.MustNewConstMetric(c.leader, prometheus.GaugeValue, bit(s.Leading()), s.name)
	}
}
