// Takeover records (issue 17): what a survivor needs to end and settle a
// call of a node that died mid-call, kept in etcd while the call is up.

package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/shopspring/decimal"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/ledger"
)

// Record is one answered, non-free call's takeover record, at
// takeover/<node>/<epoch>/<call> (JSON):
//
//   - Call is the call as the node's ledger last had it: what its CDR
//     needs (org, user, numbers, direction, rate, plan, start, answer),
//     its committed charge and pool minutes, and the increment it holds
//     (Call.Hold: money or a minute held, open).
//   - Dialog is the gateway's opaque dialog record (AnswerDialog,
//     UpdateDialog): both legs, enough to send each a BYE.
//   - PaidThrough is when the increment it holds ends: a survivor BYEs
//     the legs then (at once if it is past).
//   - History is the call's committed (charge, pool minutes) with the
//     local ledger sequence number of each change, since the first one at
//     or before the last landed report (the base): a survivor finds what
//     the call had committed as of the report's AsOf (Slice.AsOf).
//   - Closed is the CDR once the call ended on its node: its final charge.
//     The node deletes a closed record once a landed report covers it.
//
// Invariant (with orgSpend.gate): every change of a call's committed
// charge or pool minutes in the local ledger is in a landed record before
// any report reads a balance (or pool usage) as of a sequence number at or
// after it. So for a dead incarnation, per org:
//
//	spent since its last report = Σ over its records of final − committed as of AsOf
//
// where final is Closed.Charge, or Call.Charge + the held increment for a
// call up (which pays its open increment whole when the reaper ends it).
type Record struct {
	Node        string          `json:"node"`
	Epoch       int64           `json:"epoch"`
	Call        ledger.Call     `json:"call"`
	Dialog      json.RawMessage `json:"dialog,omitempty"`
	PaidThrough time.Time       `json:"paid_through"`
	// PoolMonth is the month of the pool the call last drew a minute
	// from ("" if none): a call that spilled to credits keeps it.
	PoolMonth string      `json:"pool_month,omitempty"`
	History   []Point     `json:"history"`
	Closed    *ledger.CDR `json:"closed,omitempty"`
}

// Point is a call's committed charge and pool minutes after the local
// ledger operation Seq.
type Point struct {
	Seq     uint64          `json:"seq"`
	Charge  decimal.Decimal `json:"charge"`
	Minutes int             `json:"minutes,omitempty"`
}

// at is the committed charge and minutes as of seq: the last point at or
// before it (none: the call had committed nothing yet).
func (r *Record) at(seq uint64) (decimal.Decimal, int) {
	c, m := decimal.Zero, 0
	for _, p := range r.History {
		if p.Seq > seq {
			break
		}
		c, m = p.Charge, p.Minutes
	}
	return c, m
}

// final is what the call pays in all: its CDR's, or, up, its committed
// charge and minutes plus the increment it holds.
func (r *Record) final() (decimal.Decimal, int) {
	if r.Closed != nil {
		return r.Closed.Charge, r.Closed.PoolMinutes
	}
	c, m := r.Call.Charge, r.Call.PoolMinutes
	if r.Call.Hold.Open {
		c, m = c.Add(r.Call.Hold.Credit), m+r.Call.Hold.Minutes
	}
	return c, m
}

// poolID is the pool (org/plan/month) the call last drew minutes from; ""
// if none.
func (r *Record) poolID() string {
	if r.Call.Plan == "" || r.PoolMonth == "" {
		return ""
	}
	return r.Call.Org + "/" + r.Call.Plan + "/" + r.PoolMonth
}

func paidThrough(c ledger.Call) time.Time {
	if c.Hold.Open {
		from := c.HoldFrom
		if from.IsZero() {
			from = c.Answer
		}
		return from.Add(time.Duration(c.Hold.Seconds) * time.Second)
	}
	return c.LastAt
}

// maxRecordOps bounds one group commit: etcd refuses transactions of more than
// --max-txn-ops (128 by default) operations; the fence is a comparison.
const maxRecordOps = 120

// recorder keeps this node's takeover records: the calls it has records
// for, and the group committer that writes them.
//
// Invariant: recs holds every record of this incarnation that is in etcd
// or queued for it; a record leaves recs when its delete is queued. A
// put writes its call's latest record (take), so a call's records land in
// the order of its changes whoever queued them. The queue is bounded by
// the calls up times the changes each makes while one batch is in flight
// (a step does not wait for its record, StepPending; an etcd leader
// election lets a few steps of a call queue), each delete being of a
// record in recs.
// Lock order: mu is a leaf; neither Books.mu nor the gate's own mutex
// (landGate) is ever held with it.
type recorder struct {
	mu     sync.Mutex
	recs   map[string]*Record // by call id; guarded by mu
	queue  []*recOp           // guarded by mu
	closed bool               // guarded by mu; the committer stopped
	wake   chan struct{}
	// batches and ops count the group commits and what they carried.
	batches, ops, maxBatch int64 // guarded by mu
}

// recOp is one queued write: a put (rec non-nil) or a delete, and the
// channel its writer waits on (nil: nobody waits).
type recOp struct {
	key string
	// call, for a put: the record written is recs[call] as it is when the
	// batch is taken (the latest), not as it was when the op was queued,
	// so an older write queued after a newer one cannot land over it.
	call string
	val  string
	del  bool
	skip bool // a put whose record left recs (its delete is queued)
	done chan error
}

func newRecorder() *recorder {
	return &recorder{recs: map[string]*Record{}, wake: make(chan struct{}, 1)}
}

// RecordStats are the group committer's figures: batches written, record
// writes they carried (puts and deletes), the largest batch, and the
// records this node has now.
type RecordStats struct {
	Batches, Ops, MaxBatch int64
	Live                   int
}

// RecordStats reports the takeover records' group commits so far.
func (b *Books) RecordStats() RecordStats {
	r := b.rec
	r.mu.Lock()
	defer r.mu.Unlock()
	return RecordStats{Batches: r.batches, Ops: r.ops, MaxBatch: r.maxBatch, Live: len(r.recs)}
}

// enqueue queues writes and wakes the committer; refused once it stopped.
func (r *recorder) enqueue(ops ...*recOp) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return fmt.Errorf("%w: the node is closing", ledger.ErrUnavailable)
	}
	r.queue = append(r.queue, ops...)
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
	return nil
}

// commitLoop is the group committer: whatever is queued when the previous
// batch returns goes in the next (up to maxRecordOps distinct keys per
// transaction, the last write of a key winning), so batches grow with the
// load and no timer delays a lone write. Runs until Close, and on Close
// finishes what is queued or in flight first (the queue closed to new
// writes): a call's closed record queued just before a graceful stop
// must land, or a survivor reading the call as up would settle it again
// should the stop's give-back fail. Each batch is bounded by
// commitRetrying's deadline, not by b.ctx.
func (b *Books) commitLoop() {
	defer b.wg.Done()
	r := b.rec
	for {
		stopping := false
		select {
		case <-b.ctx.Done():
			r.mu.Lock()
			r.closed = true
			r.mu.Unlock()
			stopping = true
		case <-r.wake:
		}
		for {
			batch := r.take()
			if len(batch) == 0 {
				break
			}
			err := b.writeBatch(batch)
			for _, op := range batch {
				if op.done != nil {
					op.done <- err
				}
			}
		}
		if stopping {
			return
		}
	}
}

// take removes the next batch from the queue: the ops of up to maxRecordOps
// distinct keys, in queue order.
func (r *recorder) take() []*recOp {
	r.mu.Lock()
	defer r.mu.Unlock()
	keys := map[string]bool{}
	n := 0
	for n < len(r.queue) {
		k := r.queue[n].key
		if !keys[k] {
			if len(keys) == maxRecordOps {
				break
			}
			keys[k] = true
		}
		n++
	}
	batch := r.queue[:n:n]
	r.queue = r.queue[n:]
	if len(r.queue) == 0 {
		r.queue = nil
	}
	for _, op := range batch {
		if op.del || op.call == "" {
			continue
		}
		rec, ok := r.recs[op.call]
		if !ok {
			op.skip = true
			continue
		}
		v, err := json.Marshal(rec)
		if err != nil { // a Record always marshals; keep the queued value
			continue
		}
		op.val = string(v)
	}
	return batch
}

// writeBatch writes one batch in one fenced transaction, retried within
// OpTimeout (an etcd leader election must not fail the node); a failure
// after that fails the books closed (ErrUnavailable).
func (b *Books) writeBatch(batch []*recOp) error {
	if err := b.Err(); err != nil {
		return err
	}
	last := map[string]*recOp{}
	var order []string
	for _, op := range batch {
		if op.skip {
			continue
		}
		if _, ok := last[op.key]; !ok {
			order = append(order, op.key)
		}
		last[op.key] = op
	}
	if len(order) == 0 {
		return nil
	}
	ops := make([]clientv3.Op, 0, len(order))
	for _, k := range order {
		if op := last[k]; op.del {
			ops = append(ops, clientv3.OpDelete(k))
		} else {
			ops = append(ops, clientv3.OpPut(k, op.val))
		}
	}
	start := time.Now()
	// Not b.ctx: Close cancels it and then waits for the queue to drain
	// (commitLoop); commitRetrying bounds the attempt by OpTimeout or the
	// lease deadline. A cancelled write is no reason to fail closed.
	err := b.n.commitRetrying(context.WithoutCancel(b.ctx), nil, ops)
	b.rec.mu.Lock()
	b.rec.batches++
	b.rec.ops += int64(len(ops))
	b.rec.maxBatch = max(b.rec.maxBatch, int64(len(ops)))
	b.rec.mu.Unlock()
	b.recLatency.add(time.Since(start))
	if err != nil {
		b.log.Error("cluster: takeover records could not be written; failing closed", "records", len(ops), "error", err)
		b.failHard(err)
		return b.Err()
	}
	return nil
}

// commitRetrying is commit (fenced, unconditional otherwise) retried on
// errors that are not a refusal until OpTimeout has passed since the
// first attempt, or the node's local lease deadline if that is later:
// while the lease stands no survivor can act for this node, so waiting out
// an etcd leader election (a second or two, more than the default 2 s
// op_timeout leaves once the first attempt hung) costs a call's step some
// latency rather than failing the node closed. Each attempt gets a third
// of OpTimeout (at least 500 ms): a request sent to a member that lost its
// leader waits for a new one, and a retry may reach the member that has
// it. Only for idempotent writes (puts and deletes of whole values).
func (n *Node) commitRetrying(ctx context.Context, cmps []clientv3.Cmp, ops []clientv3.Op) error {
	deadline := time.Now().Add(max(n.cfg.OpTimeout, n.Deadline().Sub(n.clk.Now())))
	per := max(n.cfg.OpTimeout/3, 500*time.Millisecond)
	pause := 50 * time.Millisecond
	for {
		until := time.Now().Add(per)
		if until.After(deadline) {
			until = deadline
		}
		actx, cancel := context.WithDeadline(ctx, until)
		ok, _, err := n.commit(actx, cmps, ops)
		cancel()
		switch {
		case err == nil && ok:
			return nil
		case err == nil:
			return fmt.Errorf("takeover records: a comparison failed: %w", ErrContention)
		case errors.Is(err, ErrFenced) || ctx.Err() != nil:
			return err
		}
		if !time.Now().Add(pause).Before(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pause):
		}
		pause = min(2*pause, 500*time.Millisecond)
	}
}

// failHard fails the books closed on any error (fail does it only for a
// fenced node): a node whose takeover records cannot land must not sell.
func (b *Books) failHard(err error) {
	b.mu.Lock()
	if b.failed == nil {
		b.failed = fmt.Errorf("%w: %w", ledger.ErrUnavailable, err)
	}
	b.mu.Unlock()
}

// writeRecord queues the call's record and waits until it landed.
func (b *Books) writeRecord(rec *Record) error {
	v, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("takeover record of %s: %w", rec.Call.ID, err)
	}
	done := make(chan error, 1)
	if err := b.rec.enqueue(&recOp{key: b.n.k.takeover(b.n.ID(), b.n.Epoch(), rec.Call.ID), call: rec.Call.ID, val: string(v), done: done}); err != nil {
		return err
	}
	if err := <-done; err != nil {
		return fmt.Errorf("takeover record of %s: %w", rec.Call.ID, err)
	}
	return nil
}

// trimHistory keeps the points after asOf and the last one at or before
// it (the base).
func trimHistory(h []Point, asOf uint64) []Point {
	base := -1
	for i, p := range h {
		if p.Seq <= asOf {
			base = i
		}
	}
	if base <= 0 {
		return h
	}
	return append([]Point(nil), h[base:]...)
}

// coveredAsOf is the sequence number up to which landed reports cover a
// record of the org (drawing pool): the org's credit reports, and the
// pool's when the call drew one.
func (b *Books) coveredAsOf(org, pool string) uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	var asOf uint64
	if o, ok := b.orgs[org]; ok {
		asOf = o.asOf
	}
	if pool != "" {
		p, ok := b.pools[pool]
		if !ok {
			return 0
		}
		asOf = min(asOf, p.asOf)
	}
	return asOf
}

// writeRecordThen queues the record and returns at once; release runs
// once it landed or failed (a failure fails the books closed). For a
// change whose caller need not wait: a refused step or a close, whose call
// ends anyway; release keeps the org's gate entered until then.
func (b *Books) writeRecordThen(rec *Record, release func()) error {
	_, err := b.queueRecord(rec, release)
	return err
}

// queueRecord queues the record and returns at once with landed, which
// yields exactly once: nil when the record is in etcd, else the error (the
// books then failed closed, writeBatch). release runs just before, once it
// landed or failed. Nobody need read landed.
func (b *Books) queueRecord(rec *Record, release func()) (<-chan error, error) {
	v, err := json.Marshal(rec)
	if err != nil {
		release()
		return nil, fmt.Errorf("takeover record of %s: %w", rec.Call.ID, err)
	}
	b.mu.Lock()
	if b.ctx.Err() != nil { // cancelled under mu: no Add after Close's Wait
		b.mu.Unlock()
		release()
		return nil, fmt.Errorf("takeover record of %s: %w: the node is closing", rec.Call.ID, ledger.ErrUnavailable)
	}
	b.wg.Add(1)
	b.mu.Unlock()
	done := make(chan error, 1)
	if err := b.rec.enqueue(&recOp{key: b.n.k.takeover(b.n.ID(), b.n.Epoch(), rec.Call.ID), call: rec.Call.ID, val: string(v), done: done}); err != nil {
		b.wg.Done()
		release()
		return nil, err
	}
	landed := make(chan error, 1)
	go func() {
		defer b.wg.Done()
		err := <-done
		release()
		if err != nil {
			err = fmt.Errorf("takeover record of %s: %w", rec.Call.ID, err)
		}
		landed <- err
	}()
	return landed, nil
}

// recordCall brings the call's record up to date with the local ledger
// after a change (answer, step, dialog update) and waits until it landed.
// Under the org's gate (shared) when the charge may have changed. A call
// not up, free or without a record (not answered) has nothing to write.
func (b *Books) recordCall(callID string, dialog json.RawMessage, answer bool) error {
	rec, err := b.nextRecord(callID, dialog, answer)
	if rec == nil || err != nil {
		return err
	}
	return b.writeRecord(rec)
}

// recordCallPending is recordCall without the wait: landed (nil: nothing
// to write) yields once the record landed or could not.
func (b *Books) recordCallPending(callID string, dialog json.RawMessage) (<-chan error, error) {
	rec, err := b.nextRecord(callID, dialog, false)
	if rec == nil || err != nil {
		return nil, err
	}
	return b.queueRecord(rec, func() {})
}

// nextRecord is the call's record brought up to date with the local
// ledger, kept as this node's (nil: nothing to write), for the caller to
// write.
func (b *Books) nextRecord(callID string, dialog json.RawMessage, answer bool) (*Record, error) {
	for {
		rec, lost := b.nextRecordOnce(callID, dialog, answer)
		if !lost {
			return rec, nil
		}
		// Another change of the call rewrote its record meanwhile, from a
		// read that may be older or newer than ours: read both again.
	}
}

// nextRecordOnce is one attempt of nextRecord; lost: the call's record
// changed between the read and the store (try again from the top).
func (b *Books) nextRecordOnce(callID string, dialog json.RawMessage, answer bool) (_ *Record, lost bool) {
	c, seq, up := b.local.CallAsOf(callID)
	if !up || c.Free || !c.Answered() {
		return nil, false
	}
	b.rec.mu.Lock()
	old, ok := b.rec.recs[callID]
	if !ok && !answer {
		b.rec.mu.Unlock()
		return nil, false
	}
	rec := &Record{Node: b.n.ID(), Epoch: b.n.Epoch(), Call: c, PaidThrough: paidThrough(c)}
	if ok {
		rec.Dialog, rec.History, rec.PoolMonth = old.Dialog, old.History, old.PoolMonth
	}
	if c.Hold.Source == ledger.SourcePool {
		rec.PoolMonth = c.Hold.Month
	}
	if dialog != nil {
		rec.Dialog = append(json.RawMessage(nil), dialog...)
	}
	b.rec.mu.Unlock()
	if n := len(rec.History); n == 0 || !rec.History[n-1].Charge.Equal(c.Charge) || rec.History[n-1].Minutes != c.PoolMinutes {
		rec.History = append(append([]Point(nil), rec.History...), Point{Seq: seq, Charge: c.Charge, Minutes: c.PoolMinutes})
	}
	rec.History = trimHistory(rec.History, b.coveredAsOf(c.Org, rec.poolID()))
	b.rec.mu.Lock()
	if cur, still := b.rec.recs[callID]; still != ok || cur != old {
		// Rewritten meanwhile (the gateway serializes a call's
		// operations, but a retry or a dialog update may race): try
		// again from the top. Closed: CallAsOf will say it is not up.
		b.rec.mu.Unlock()
		return nil, true
	}
	b.rec.recs[callID] = rec
	b.rec.mu.Unlock()
	return rec, false
}

// closedRecord is the record of a call that ended, rewritten as closed with
// its CDR and kept as this node's (nil: the call has none), for the caller
// to write. Under the org's gate (shared), after the local close.
func (b *Books) closedRecord(cdr ledger.CDR) *Record {
	seq := b.local.Seq()
	for {
		b.rec.mu.Lock()
		old, ok := b.rec.recs[cdr.CallID]
		b.rec.mu.Unlock()
		if !ok || old.Closed != nil {
			return nil // none, or a retried close: the other one writes
		}
		covered := b.coveredAsOf(cdr.Org, old.poolID())
		rec := *old
		rec.Closed = &cdr
		rec.History = trimHistory(append(append([]Point(nil), old.History...), Point{Seq: seq, Charge: cdr.Charge, Minutes: cdr.PoolMinutes}), covered)
		b.rec.mu.Lock()
		if cur := b.rec.recs[cdr.CallID]; cur == old {
			b.rec.recs[cdr.CallID] = &rec
			b.rec.mu.Unlock()
			return &rec
		}
		// Rewritten meanwhile (a step's or a dialog update's record):
		// the close builds on the new one, or it is lost.
		b.rec.mu.Unlock()
	}
}

// dropCovered queues the deletion of the org's closed records that landed
// reports cover: their last change is at or before the reported AsOf of
// the org's slice (and of the pool they drew), so a reaper no longer needs
// them. Nobody waits for the deletes.
func (b *Books) dropCovered(org string) {
	type cand struct {
		id, pool string
		last     uint64
	}
	var cs []cand
	b.rec.mu.Lock()
	for id, r := range b.rec.recs {
		if r.Closed != nil && r.Call.Org == org && len(r.History) > 0 {
			cs = append(cs, cand{id, r.poolID(), r.History[len(r.History)-1].Seq})
		}
	}
	b.rec.mu.Unlock()
	var ops []*recOp
	for _, c := range cs {
		if c.last > b.coveredAsOf(org, c.pool) {
			continue
		}
		b.rec.mu.Lock()
		if r, ok := b.rec.recs[c.id]; ok && r.Closed != nil {
			delete(b.rec.recs, c.id)
			ops = append(ops, &recOp{key: b.n.k.takeover(b.n.ID(), b.n.Epoch(), c.id), del: true})
		}
		b.rec.mu.Unlock()
	}
	if len(ops) > 0 {
		_ = b.rec.enqueue(ops...) // closing: Close deletes them all
	}
}

// dropAllRecords deletes every record of this incarnation and waits: Close
// gave every slice back, which settles all its calls' money (their CDRs are
// in the local ledger).
func (b *Books) dropAllRecords(ctx context.Context) error {
	b.rec.mu.Lock()
	had := len(b.rec.recs) > 0 || b.rec.batches > 0
	b.rec.recs = map[string]*Record{}
	b.rec.mu.Unlock()
	if !had {
		return nil // this incarnation never wrote one
	}
	return b.n.commitRetrying(ctx, nil, []clientv3.Op{clientv3.OpDelete(b.n.k.takeoverOf(b.n.ID(), b.n.Epoch()), clientv3.WithPrefix())})
}

// latencies keeps the record write times, for a test's or a benchmark's
// figures (never asserted on).
type latencies struct {
	mu  sync.Mutex
	all []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	if len(l.all) < 1<<16 {
		l.all = append(l.all, d)
	}
	l.mu.Unlock()
}

// RecordLatencies are the durations of the record batches written so far
// (at most 65536).
func (b *Books) RecordLatencies() []time.Duration {
	b.recLatency.mu.Lock()
	defer b.recLatency.mu.Unlock()
	return append([]time.Duration(nil), b.recLatency.all...)
}
