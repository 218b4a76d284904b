// The reaper (issue 17): a survivor ends and settles the calls and the
// money of a node incarnation whose lease etcd expired or revoked.

package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shopspring/decimal"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/ledger"
)

// LegEnder ends both legs of a dead node's call from its dialog record (the
// gateway's opaque JSON, ledger.Books.AnswerDialog): a BYE in each, from
// this node. The binary gives the gateway's (gateway.(*Gateway).EndLegs).
type LegEnder func(ctx context.Context, callID string, dialog json.RawMessage) error

// claim is reaps/<node>/<epoch>: who settles that dead incarnation, and
// how far it got, so that a survivor that dies mid-way is taken over by
// another (by compare-and-set on the claim's mod revision, once the
// claimer's own member key is gone). Every step of a reap is a fenced
// transaction that also compares the claim's mod revision and rewrites the
// claim: only the current claimer's steps land, each exactly once.
//
//	Self     the dead node's own next incarnation claimed it (rejoin.go): it
//	         settles from its own disk, survivors never take it over
//	Planned  Calls is the plan: each live call's settlement and end
//	Adopted  the CDRs are in the ledger of the claimer that set it (a
//	         successor does not adopt them again)
//	Slices   the slices (org ids) and pools (org/plan/month) settled
//	Settled  all the money settled: the dead node may rejoin (rejoin.go)
//	Done     the legs of every call that was up were sent their BYEs,
//	         records deleted
type claim struct {
	By       string                `json:"by"`
	ByEpoch  int64                 `json:"by_epoch"`
	Self     bool                  `json:"self,omitempty"`
	Planned  bool                  `json:"planned,omitempty"`
	Calls    map[string]reapedCall `json:"calls,omitempty"`
	Adopted  bool                  `json:"adopted,omitempty"`
	Slices   map[string]bool       `json:"slices,omitempty"`
	Pools    map[string]bool       `json:"pools,omitempty"`
	Returned decimal.Decimal       `json:"returned"`
	Settled  bool                  `json:"settled,omitempty"`
	Done     bool                  `json:"done,omitempty"`
}

// reapedCall is one call of a dead incarnation as its reaper settled it:
// what it paid in all (its final), when its legs end, and whether it was
// still up (a closed one has its CDR on the dead node's disk already).
type reapedCall struct {
	ledger.Settled
	End  time.Time `json:"end"`
	Live bool      `json:"live,omitempty"`
}

// reapState is the reaper's part of Books.
type reapState struct {
	mu      sync.Mutex
	ender   LegEnder        // guarded by mu
	started bool            // guarded by mu
	active  map[string]bool // guarded by mu; claims this node is working on

	reaps, calls atomic.Int64
	kick         chan struct{}
}

// SetLegEnder gives the reaper the function that ends a dead node's call's
// legs. Set it before StartReaper.
func (b *Books) SetLegEnder(f LegEnder) {
	b.reap.mu.Lock()
	b.reap.ender = f
	b.reap.mu.Unlock()
}

// Reaped are the dead incarnations this node reaped and their live calls.
func (b *Books) Reaped() (incarnations, calls int64) {
	return b.reap.reaps.Load(), b.reap.calls.Load()
}

// StartReaper starts watching members/: when an incarnation's member key
// goes (its lease expired or was revoked), this node tries to claim and
// reap it (see claim); it also looks every 5 lease TTLs, for what a lost
// watch missed. Start it once the gateway can send BYEs. Close stops it.
func (b *Books) StartReaper() {
	b.reap.mu.Lock()
	defer b.reap.mu.Unlock()
	if b.reap.started {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ctx.Err() != nil {
		return
	}
	b.reap.started = true
	b.reap.kick = make(chan struct{}, 1)
	b.wg.Add(2)
	go b.watchMembers()
	go b.reapLoop()
}

func (b *Books) kickReaper() {
	select {
	case b.reap.kick <- struct{}{}:
	default:
	}
}

// watchMembers turns deletions under members/ into reaper kicks; a watch
// that ends (compaction, lost connection) is started again after a pause.
func (b *Books) watchMembers() {
	defer b.wg.Done()
	for b.ctx.Err() == nil {
		wch := b.n.cli.Watch(clientv3.WithRequireLeader(b.ctx), b.n.k.members(), clientv3.WithPrefix(),
			clientv3.WithFilterPut())
		for resp := range wch {
			if resp.Err() != nil {
				break
			}
			if len(resp.Events) > 0 {
				b.kickReaper()
			}
		}
		select {
		case <-b.ctx.Done():
			return
		case <-time.After(time.Second):
			b.kickReaper() // a deletion may have come while no watch was up
		}
	}
}

// reapLoop scans for dead incarnations at start, at every kick and every
// 5 lease TTLs (on the injected clock); a scan that failed (etcd out of
// reach, an election) is tried again after a second.
func (b *Books) reapLoop() {
	defer b.wg.Done()
	wake := make(chan struct{}, 1)
	b.kickReaper()
	next := 5 * b.n.cfg.LeaseTTL
	for {
		t := b.clk.AfterFunc(next, func() {
			select {
			case wake <- struct{}{}:
			default:
			}
		})
		select {
		case <-b.ctx.Done():
			t.Stop()
			return
		case <-wake:
		case <-b.reap.kick:
			t.Stop()
		}
		next = 5 * b.n.cfg.LeaseTTL
		if b.Err() != nil {
			continue
		}
		if err := b.ReapDead(b.ctx); err != nil && b.ctx.Err() == nil {
			b.log.Warn("cluster reaper: scan failed; trying again in a second", "error", err)
			next = time.Second
		}
	}
}

// incarnation is one node id's epoch.
type incarnation struct {
	node  string
	epoch int64
}

// ReapDead reaps every incarnation of another node that is dead (no
// members/<epoch>) and left takeover records, slices, pool slices or an
// unfinished claim. It is what the reaper loop runs; tests call it too.
func (b *Books) ReapDead(ctx context.Context) error {
	cands, err := b.n.incarnations(ctx, "")
	if err != nil {
		return err
	}
	live, err := b.n.liveEpochs(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, c := range cands {
		if c.node == b.n.ID() || live[c.epoch] {
			continue // this node's earlier incarnations are settled by its start (rejoin.go)
		}
		if err := b.reapOne(ctx, c); err != nil {
			errs = append(errs, fmt.Errorf("reap %s epoch %d: %w", c.node, c.epoch, err))
		}
	}
	return errors.Join(errs...)
}

// incarnations lists the incarnations (of node, or of every node when
// node is "") that have takeover records, credit or pool slices, or a claim
// not done, sorted.
func (n *Node) incarnations(ctx context.Context, node string) ([]incarnation, error) {
	seen := map[incarnation]bool{}
	sub := ""
	if node != "" {
		sub = node + "/"
	}
	err := n.eachKV(ctx, n.k.takeovers()+sub, true, func(kv *mvccpb.KeyValue) error {
		parts := strings.Split(strings.TrimPrefix(string(kv.Key), n.k.takeovers()), "/")
		if len(parts) >= 2 {
			if e, err := strconv.ParseInt(parts[1], 10, 64); err == nil {
				seen[incarnation{parts[0], e}] = true
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = n.eachKV(ctx, n.k.slices()+sub, false, func(kv *mvccpb.KeyValue) error {
		s, err := decodeSlice(kv)
		if err == nil {
			seen[incarnation{s.Node, s.Epoch}] = true
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = n.eachKV(ctx, n.k.poolSlices()+sub, false, func(kv *mvccpb.KeyValue) error {
		_, s, err := decodePool(nil, kv)
		if err == nil && s.Epoch > 0 {
			seen[incarnation{s.Node, s.Epoch}] = true
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = n.eachKV(ctx, n.k.prefix+"reaps/"+sub, false, func(kv *mvccpb.KeyValue) error {
		var cl claim
		parts := strings.Split(strings.TrimPrefix(string(kv.Key), n.k.prefix+"reaps/"), "/")
		if json.Unmarshal(kv.Value, &cl) == nil && !cl.Done && len(parts) == 2 {
			if e, err := strconv.ParseInt(parts[1], 10, 64); err == nil {
				seen[incarnation{parts[0], e}] = true
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make([]incarnation, 0, len(seen))
	for c := range seen {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].node != out[j].node {
			return out[i].node < out[j].node
		}
		return out[i].epoch < out[j].epoch
	})
	return out, nil
}

// liveEpochs are the epochs with a member key.
func (n *Node) liveEpochs(ctx context.Context) (map[int64]bool, error) {
	live := map[int64]bool{}
	err := n.eachKV(ctx, n.k.members(), true, func(kv *mvccpb.KeyValue) error {
		if e, err := strconv.ParseInt(strings.TrimPrefix(string(kv.Key), n.k.members()), 10, 64); err == nil {
			live[e] = true
		}
		return nil
	})
	return live, err
}

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

// readClaim reads a claim and its mod revision (0: none).
func (n *Node) readClaim(ctx context.Context, ck string) (*claim, int64, error) {
	rctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
	defer cancel()
	resp, err := n.cli.Get(rctx, ck)
	if err != nil {
		return nil, 0, err
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, nil
	}
	var cl claim
	if err := json.Unmarshal(resp.Kvs[0].Value, &cl); err != nil {
		return nil, 0, fmt.Errorf("claim %s: %w", ck, err)
	}
	return &cl, resp.Kvs[0].ModRevision, nil
}

// memberAlive says whether members/<epoch> exists.
func (n *Node) memberAlive(ctx context.Context, epoch int64) (bool, error) {
	rctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
	defer cancel()
	resp, err := n.cli.Get(rctx, n.k.member(epoch), clientv3.WithCountOnly())
	if err != nil {
		return false, err
	}
	return resp.Count > 0, nil
}

// takeClaim claims the incarnation for this node: a new claim (create if
// absent) or one whose claimer is dead (compare-and-set on its mod
// revision). self: this node's own earlier incarnation (rejoin), claimed
// without waiting for its lease, and a dead self-claim of it taken over;
// otherwise the incarnation's member key must be gone, and self-claims are
// left alone. It returns the claim as this node holds it and its mod
// revision, or nil when another holds it (or it is done).
func (n *Node) takeClaim(ctx context.Context, c incarnation, self bool) (*claim, int64, *claim, error) {
	ck := n.k.reap(c.node, c.epoch)
	for attempt := 0; attempt < maxAttempts; attempt++ {
		cur, rev, err := n.readClaim(ctx, ck)
		if err != nil {
			return nil, 0, nil, err
		}
		next := &claim{By: n.ID(), ByEpoch: n.Epoch(), Self: self, Returned: decimal.Zero}
		cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(ck), "=", rev)}
		if !self {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(n.k.member(c.epoch)), "=", 0))
		}
		if cur != nil {
			if cur.Done || cur.Self != self || (cur.By == n.ID() && cur.ByEpoch == n.Epoch()) {
				if cur.By == n.ID() && cur.ByEpoch == n.Epoch() && !cur.Done {
					return cur, rev, nil, nil // ours already (a retried reap)
				}
				return nil, 0, cur, nil
			}
			alive, err := n.memberAlive(ctx, cur.ByEpoch)
			if err != nil {
				return nil, 0, nil, err
			}
			if alive {
				return nil, 0, cur, nil
			}
			// The claimer died mid-way: take over its progress.
			next.Planned, next.Calls, next.Adopted, next.Slices, next.Pools, next.Returned, next.Settled =
				cur.Planned, cur.Calls, cur.Adopted, cur.Slices, cur.Pools, cur.Returned, cur.Settled
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(n.k.member(cur.ByEpoch)), "=", 0))
		}
		ok, nrev, err := n.commit(ctx, cmps, []clientv3.Op{clientv3.OpPut(ck, encode(next))})
		if err != nil {
			return nil, 0, nil, err
		}
		if ok {
			return next, nrev, nil, nil
		}
		if !self {
			alive, err := n.memberAlive(ctx, c.epoch)
			if err != nil {
				return nil, 0, nil, err
			}
			if alive {
				return nil, 0, nil, ErrNodeAlive
			}
		}
	}
	return nil, 0, nil, ErrContention
}

// errClaimLost: another survivor took the claim over (this one was taken
// for dead); it finishes the reap.
var errClaimLost = errors.New("reap claim taken over by another node")

// claimStep writes one step of a reap: ops, the claim rewritten as cl, on
// the condition that the claim is still at rev (ours) and cmps hold. ok
// false: a comparison of cmps failed (re-read and decide again).
func (n *Node) claimStep(ctx context.Context, ck string, rev int64, cl *claim, cmps []clientv3.Cmp, ops []clientv3.Op) (int64, bool, error) {
	ok, nrev, err := n.commit(ctx, append([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(ck), "=", rev)}, cmps...),
		append(ops, clientv3.OpPut(ck, encode(cl))))
	if err != nil {
		return 0, false, err
	}
	if ok {
		return nrev, true, nil
	}
	cur, crev, err := n.readClaim(ctx, ck)
	if err != nil {
		return 0, false, err
	}
	if cur == nil || crev != rev {
		return 0, false, errClaimLost
	}
	return rev, false, nil
}

// records reads an incarnation's takeover records.
func (n *Node) records(ctx context.Context, c incarnation) (map[string]*Record, error) {
	out := map[string]*Record{}
	err := n.eachKV(ctx, n.k.takeoverOf(c.node, c.epoch), false, func(kv *mvccpb.KeyValue) error {
		var r Record
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			return fmt.Errorf("takeover record %s: %w", kv.Key, err)
		}
		out[r.Call.ID] = &r
		return nil
	})
	return out, err
}

// reapOne claims a dead incarnation and, if this node holds the claim,
// settles it (reapClaimed); one reap of an incarnation at a time on this
// node (its last step, after the BYEs, runs on a goroutine of its own).
func (b *Books) reapOne(ctx context.Context, c incarnation) error {
	ck := b.n.k.reap(c.node, c.epoch)
	b.reap.mu.Lock()
	if b.reap.active[ck] {
		b.reap.mu.Unlock()
		return nil
	}
	if b.reap.active == nil {
		b.reap.active = map[string]bool{}
	}
	b.reap.active[ck] = true
	b.reap.mu.Unlock()
	finishing := false
	defer func() {
		if !finishing {
			b.reapDone(ck)
		}
	}()
	cl, rev, _, err := b.n.takeClaim(ctx, c, false)
	if errors.Is(err, ErrNodeAlive) {
		return nil
	}
	if err != nil || cl == nil {
		return err
	}
	finishing, err = b.reapClaimed(ctx, c, cl, rev)
	if errors.Is(err, errClaimLost) {
		b.log.Warn("cluster reaper: claim taken over by another node", "node", c.node, "epoch", c.epoch)
		return nil
	}
	return err
}

func (b *Books) reapDone(ck string) {
	b.reap.mu.Lock()
	delete(b.reap.active, ck)
	b.reap.mu.Unlock()
}

// reapClaimed settles a dead incarnation this node claimed, step by step
// (each step lands once, with the claim's progress):
//
//  1. plan: each record's settlement (its final: committed + held for a
//     call up) and, for a call up, its end (max(now, PaidThrough)),
//     written into the claim;
//  2. the CDRs (reason node_failure) of the calls that were up adopted
//     into this node's ledger (Adopted);
//  3. per org slice of the incarnation: its true unspent = reported
//     unspent − what its calls committed after the report's AsOf (from the
//     records), to unallocated, the rest to spent, slice deleted, reclaim
//     record written (Reaped); per pool slice likewise in minutes
//     (Settled: the dead node may rejoin);
//  4. on a goroutine of its own: the BYEs of both legs of each call that
//     was up, at its end (LegEnder), then the records deleted and the claim
//     done. A claimer that dies before has its claim taken over: its
//     successor sends the BYEs again (a leg already ended answers 481).
//
// finishing says step 4 runs (it clears the claim from reapState.active).
func (b *Books) reapClaimed(ctx context.Context, c incarnation, cl *claim, rev int64) (finishing bool, err error) {
	ck := b.n.k.reap(c.node, c.epoch)
	recs, err := b.n.records(ctx, c)
	if err != nil {
		return false, err
	}
	step := func(cmps []clientv3.Cmp, ops []clientv3.Op) error {
		nrev, ok, err := b.n.claimStep(ctx, ck, rev, cl, cmps, ops)
		if err != nil {
			return err
		}
		if !ok {
			return errClaimLost
		}
		rev = nrev
		return nil
	}
	if !cl.Planned {
		now := b.clk.Now()
		cl.Calls = map[string]reapedCall{}
		for id, r := range recs {
			charge, minutes := r.final()
			rc := reapedCall{Settled: ledger.Settled{Charge: charge, PoolMinutes: minutes}, Live: r.Closed == nil}
			if rc.Live {
				rc.End = r.PaidThrough
				if rc.End.Before(now) {
					rc.End = now
				}
			}
			cl.Calls[id] = rc
		}
		cl.Planned = true
		if err := step(nil, nil); err != nil {
			return false, err
		}
	}
	live := 0
	for id, rc := range cl.Calls {
		if rc.Live && recs[id] != nil {
			live++
		}
	}
	if !cl.Adopted {
		for id, rc := range cl.Calls {
			if r := recs[id]; rc.Live && r != nil {
				if err := b.local.AdoptCDR(reapCDR(r, rc.End)); err != nil {
					return false, fmt.Errorf("adopt CDR of %s: %w", id, err)
				}
			}
		}
		cl.Adopted = true
		if err := step(nil, nil); err != nil {
			return false, err
		}
	}
	var slices []*Slice
	if !cl.Settled {
		spentAfter := func(org string, asOf uint64) decimal.Decimal {
			sum := decimal.Zero
			for id, r := range recs {
				rc, ok := cl.Calls[id]
				if !ok || r.Call.Org != org {
					continue
				}
				at, _ := r.at(asOf)
				sum = sum.Add(rc.Charge.Sub(at))
			}
			return sum
		}
		err = b.n.eachKV(ctx, b.n.k.slicesOf(c.node), false, func(kv *mvccpb.KeyValue) error {
			s, err := decodeSlice(kv)
			if err != nil {
				return err
			}
			if s.Epoch == c.epoch && !cl.Slices[s.Org] {
				slices = append(slices, s)
			}
			return nil
		})
		if err != nil {
			return false, err
		}
		if cl.Slices == nil {
			cl.Slices = map[string]bool{}
		}
		for _, s := range slices {
			back, err := b.reapSlice(ctx, ck, &rev, cl, s, spentAfter(s.Org, s.AsOf))
			if err != nil {
				return false, err
			}
			cl.Returned = cl.Returned.Add(back)
		}
		for id, r := range recs {
			if _, ok := cl.Calls[id]; ok && !cl.Slices[r.Call.Org] {
				// No slice of this incarnation: its last write gave the
				// whole slice back (no call of the org was up), so every
				// call had settled within a report.
				if sa := spentAfter(r.Call.Org, ^uint64(0)); !sa.IsZero() {
					b.log.Error("cluster reaper: records of an org without a slice", "node", c.node, "epoch", c.epoch, "org", r.Call.Org)
				}
			}
		}
		if err := b.reapPools(ctx, c, ck, &rev, cl, recs); err != nil {
			return false, err
		}
		cl.Settled = true
		if err := step(nil, nil); err != nil {
			return false, err
		}
	}
	b.log.Warn("cluster reaper: settled a dead node's incarnation; ending its calls' legs", "node", c.node, "epoch", c.epoch,
		"calls_up", live, "records", len(recs), "slices", len(slices), "money_returned", cl.Returned.String())
	// 4. The BYEs, then done.
	b.mu.Lock()
	if b.ctx.Err() != nil {
		b.mu.Unlock()
		return false, b.ctx.Err()
	}
	b.wg.Add(1)
	b.mu.Unlock()
	go func() {
		defer b.wg.Done()
		defer b.reapDone(ck)
		var byes sync.WaitGroup
		sem := make(chan struct{}, maxReapByes)
		for id, rc := range cl.Calls {
			if r := recs[id]; rc.Live && r != nil {
				byes.Add(1)
				go func() {
					defer byes.Done()
					b.endLegs(id, r.Dialog, rc.End, sem)
				}()
			}
		}
		byes.Wait()
		if b.ctx.Err() != nil {
			return // closing: a survivor takes the claim over and sends them again
		}
		cl.Done = true
		if err := step(nil, []clientv3.Op{clientv3.OpDelete(b.n.k.takeoverOf(c.node, c.epoch), clientv3.WithPrefix())}); err != nil {
			b.log.Warn("cluster reaper: could not finish a reap", "node", c.node, "epoch", c.epoch, "error", err)
			return
		}
		b.reap.reaps.Add(1)
		b.reap.calls.Add(int64(live))
		b.log.Warn("cluster reaper: reaped a dead node's incarnation", "node", c.node, "epoch", c.epoch,
			"calls_ended", live, "money_returned", cl.Returned.String())
	}()
	return true, nil
}

// reapSlice settles one slice of a dead incarnation: its true unspent
// (reported unspent − spentAfter) goes back to unallocated, spentAfter to
// spent, the slice is deleted and a reclaim record (Reaped) written, with
// the claim's progress. It returns what went back.
func (b *Books) reapSlice(ctx context.Context, ck string, rev *int64, cl *claim, s *Slice, spentAfter decimal.Decimal) (decimal.Decimal, error) {
	ak, sk, rk := b.n.k.account(s.Org), b.n.k.slice(s.Node, s.Org), b.n.k.reclaim(s.ID)
	for attempt := 0; attempt < maxAttempts; attempt++ {
		kvs, err := b.n.read(ctx, ak, sk, rk)
		if err != nil {
			return decimal.Zero, err
		}
		if kvs[sk] == nil || kvs[rk] != nil {
			return decimal.Zero, nil // reclaimed (a restart's Reclaim) or given back meanwhile
		}
		cur, err := decodeSlice(kvs[sk])
		if err != nil {
			return decimal.Zero, err
		}
		if cur.ID != s.ID || cur.Epoch != s.Epoch {
			return decimal.Zero, nil
		}
		a, err := decodeAccount(kvs[ak])
		if err != nil {
			return decimal.Zero, err
		}
		unspent := cur.Unspent()
		back := unspent.Sub(spentAfter)
		spent := spentAfter
		if back.IsNegative() {
			// The records show more spent than the slice had: the node
			// sold beyond its slice (cannot happen while the ledger
			// holds only what it was given); take the excess from
			// unallocated as far as it goes.
			take := decimal.Min(back.Neg(), a.Unallocated)
			b.log.Error("cluster reaper: a dead node's calls spent more than its slice had", "org", s.Org,
				"unspent", unspent.String(), "spent_after_report", spentAfter.String(), "taken_from_unallocated", take.String())
			a.Unallocated = a.Unallocated.Sub(take)
			spent, back = unspent.Add(take), decimal.Zero
		}
		a.Unallocated = a.Unallocated.Add(back)
		a.Spent = a.Spent.Add(spent)
		if a.Spent.IsNegative() {
			return decimal.Zero, fmt.Errorf("reap slice %s: spent would go to %s: %w", s.ID, a.Spent, ErrInvalid)
		}
		cl.Slices[s.Org] = true
		nrev, ok, err := b.n.claimStep(ctx, ck, *rev, cl,
			[]clientv3.Cmp{
				clientv3.Compare(clientv3.ModRevision(sk), "=", kvs[sk].ModRevision),
				clientv3.Compare(clientv3.ModRevision(ak), "=", modRev(kvs[ak])),
				clientv3.Compare(clientv3.CreateRevision(rk), "=", 0),
				clientv3.Compare(clientv3.CreateRevision(b.n.k.member(s.Epoch)), "=", 0),
			},
			[]clientv3.Op{
				clientv3.OpDelete(sk),
				clientv3.OpPut(ak, encode(a)),
				clientv3.OpPut(rk, encode(reclaimRecord{By: b.n.ID(), Epoch: b.n.Epoch(), Org: s.Org, Unspent: back,
					Moves: cur.Moves, LastMove: cur.LastMove, Reaped: true, SpentAfter: spent})),
			})
		if err != nil {
			delete(cl.Slices, s.Org)
			return decimal.Zero, err
		}
		if ok {
			*rev = nrev
			return back, nil
		}
		delete(cl.Slices, s.Org)
	}
	return decimal.Zero, ErrContention
}

// reapPools settles the incarnation's pool slices: the minutes its calls
// used after the slice's last report (AsOf) are added to used, the
// unused minutes go back to the pool's unallocated, and the slice keeps
// Granted = Used (a pool slice is never deleted: the node's next
// incarnation adopts it).
func (b *Books) reapPools(ctx context.Context, c incarnation, ck string, rev *int64, cl *claim, recs map[string]*Record) error {
	if cl.Pools == nil {
		cl.Pools = map[string]bool{}
	}
	type ps struct {
		id string
		s  PoolSlice
	}
	var todo []ps
	err := b.n.eachKV(ctx, b.n.k.poolSlices()+c.node+"/", false, func(kv *mvccpb.KeyValue) error {
		_, s, err := decodePool(nil, kv)
		if err != nil {
			return err
		}
		id := s.Org + "/" + s.Plan + "/" + s.Month
		if s.Epoch == c.epoch && !cl.Pools[id] {
			todo = append(todo, ps{id, s})
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, p := range todo {
		after := 0
		for id, r := range recs {
			rc, ok := cl.Calls[id]
			if !ok || r.poolID() != p.id {
				continue
			}
			_, at := r.at(p.s.AsOf)
			after += rc.PoolMinutes - at
		}
		ak, sk := b.n.k.poolAccount(p.s.Org, p.s.Plan, p.s.Month), b.n.k.poolSlice(c.node, p.s.Org, p.s.Plan, p.s.Month)
		done := false
		for attempt := 0; attempt < maxAttempts && !done; attempt++ {
			kvs, err := b.n.read(ctx, ak, sk)
			if err != nil {
				return err
			}
			a, s, err := decodePool(kvs[ak], kvs[sk])
			if err != nil {
				return err
			}
			if kvs[sk] == nil || s.Epoch != c.epoch {
				break // adopted by the node's next incarnation meanwhile
			}
			used := s.Used + after
			if used < 0 || used > s.Granted {
				b.log.Error("cluster reaper: a dead node's pool minutes do not add up", "pool", p.id,
					"granted", s.Granted, "reported_used", s.Used, "used_after_report", after)
				used = min(max(used, 0), s.Granted)
			}
			a.Used += used - s.Used
			a.Unallocated += s.Granted - used
			s.Used, s.Granted = used, used
			cl.Pools[p.id] = true
			nrev, ok, err := b.n.claimStep(ctx, ck, *rev, cl,
				[]clientv3.Cmp{
					clientv3.Compare(clientv3.ModRevision(sk), "=", kvs[sk].ModRevision),
					clientv3.Compare(clientv3.ModRevision(ak), "=", modRev(kvs[ak])),
				},
				[]clientv3.Op{clientv3.OpPut(ak, encode(a)), clientv3.OpPut(sk, encode(s))})
			if err != nil {
				delete(cl.Pools, p.id)
				return err
			}
			if ok {
				*rev, done = nrev, true
			} else {
				delete(cl.Pools, p.id)
			}
		}
	}
	return nil
}

// reapCDR is the CDR of a dead node's call that was up: it paid what it
// committed and the increment it held, and ended at end.
func reapCDR(r *Record, end time.Time) ledger.CDR {
	c := r.Call
	charge, minutes := r.final()
	billed := c.BilledS
	if c.Hold.Open {
		billed += c.Hold.Seconds
	}
	cdr := ledger.CDR{CallID: c.ID, Details: c.Details, Start: c.Start.UTC(), Answer: c.Answer.UTC(), End: end.UTC(),
		BilledS: billed, PoolMinutes: minutes, Charge: charge, DisconnectReason: ledger.ReasonNodeFailure, SIPStatus: 200}
	if minutes > 0 {
		cdr.Pool = c.Plan
	}
	if d := end.Sub(c.Answer); d > 0 {
		cdr.DurationS = int((d + time.Second - 1) / time.Second)
	}
	return cdr
}

// maxReapByes bounds the calls whose legs one reap ends at once (as the
// gateway's own restart does).
const maxReapByes = 64

// endLegs ends the call's legs at `at` (at once if it is past) through
// the LegEnder, holding a place in sem meanwhile; it returns when they
// were, or when the Books close.
func (b *Books) endLegs(callID string, dialog json.RawMessage, at time.Time, sem chan struct{}) {
	b.reap.mu.Lock()
	ender := b.reap.ender
	b.reap.mu.Unlock()
	if ender == nil {
		b.log.Error("cluster reaper: no leg ender; a dead node's call's legs are not ended", "call_id", callID)
		return
	}
	if d := at.Sub(b.clk.Now()); d > 0 {
		fire := make(chan struct{})
		t := b.clk.AfterFunc(d, func() { close(fire) })
		select {
		case <-b.ctx.Done():
			t.Stop()
			return
		case <-fire:
		}
	}
	select {
	case sem <- struct{}{}:
		defer func() { <-sem }()
	case <-b.ctx.Done():
		return
	}
	if err := ender(b.ctx, callID, dialog); err != nil {
		b.log.Warn("cluster reaper: ending a dead node's call's legs failed", "call_id", callID, "error", err)
	}
}
