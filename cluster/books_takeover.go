// Books' side of the takeover records (takeover.go): a step whose record
// lands behind it, the org's gate (orgSpend.gate, landGate) and the balance
// a report reads through it, and the closed records a landed report lets
// go.

package cluster

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/creditgate/creditgate/ledger"
)

// stepRecorded is the local step and the call's takeover record after it,
// inside the org's gate (orgSpend.gate): the gate is left once the record
// landed. It does not wait for the record: landed yields once it landed
// (nil) or could not (the error; the books then failed closed and the
// gateway ends the call), and is nil when there is nothing to wait for.
//
// A refused step (the call must end now) gives no landed: its record
// lands behind it, the gate entered until then. Should the node die first,
// the record a survivor reads holds increment n, which the step
// committed: the same final charge.
func (b *Books) stepRecorded(o *orgSpend, callID string, n int, at time.Time, live ledger.Liveness) (ledger.Increment, <-chan error, error) {
	t := o.gate.enter()
	inc, err := b.local.StepAlive(callID, n, at, live)
	rec, rerr := b.nextRecord(callID, nil, false)
	switch {
	case rerr != nil:
		o.gate.leave(t)
		return ledger.Increment{}, nil, fmt.Errorf("step call %s: %w", callID, b.fail(rerr))
	case rec == nil:
		o.gate.leave(t)
		return inc, nil, err
	}
	landed, werr := b.queueRecord(rec, func() { o.gate.leave(t) })
	if werr != nil {
		return ledger.Increment{}, nil, fmt.Errorf("step call %s: %w", callID, b.fail(werr))
	}
	if err != nil {
		return inc, nil, err
	}
	return inc, landed, nil
}

// recordWait is how long a tick's report waits for an org's records in
// flight before it leaves the org to the next tick (books_tick.go): far
// more than a record takes with etcd healthy, far less than a tick.
const recordWait = 250 * time.Millisecond

// landGate is orgSpend.gate: changes enter it before their local change
// and leave it once their record landed; a read waits for the changes
// that entered before it, and never stops a new one from entering (an
// RWMutex would: a waiting writer blocks new readers, so one report
// waiting out an etcd election would hold up every step of the org).
//
// Invariant: open holds the tickets entered and not left; tickets are
// issued in increasing order (next is the next one). mu is a leaf.
type landGate struct {
	mu   sync.Mutex
	next uint64
	open map[uint64]struct{}
	// left is closed (and replaced) when a ticket leaves: a read waiting
	// looks again.
	left chan struct{}
}

// enter issues a ticket, before the change's local write.
func (g *landGate) enter() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.open == nil {
		g.open = map[uint64]struct{}{}
	}
	t := g.next
	g.next++
	g.open[t] = struct{}{}
	return t
}

// leave retires a ticket, once its change's record landed (or failed).
func (g *landGate) leave(t uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.open, t)
	if g.left != nil {
		close(g.left)
		g.left = nil
	}
}

// issued is the next ticket's number: every ticket entered before this
// call is below it.
func (g *landGate) issued() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.next
}

// waitBelow waits until no ticket below upto is open, or ctx is done.
func (g *landGate) waitBelow(ctx context.Context, upto uint64) error {
	for {
		g.mu.Lock()
		busy := false
		for t := range g.open {
			if t < upto {
				busy = true
				break
			}
		}
		if !busy {
			g.mu.Unlock()
			return nil
		}
		if g.left == nil {
			g.left = make(chan struct{})
		}
		left := g.left
		g.mu.Unlock()
		select {
		case <-left:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// asOf runs read (a read of the local ledger at one instant, with its
// sequence number), then waits until every change that entered the gate
// before the read ended has landed its record (or failed, failing the
// books closed): what it read may then be reported.
func (b *Books) asOf(ctx context.Context, o *orgSpend, read func() error) error {
	if err := read(); err != nil {
		return err
	}
	return o.gate.waitBelow(ctx, o.gate.issued())
}

// balanceAsOf reads the org's local balance and the ledger's sequence
// number at one instant, every step or close before it having landed its
// record (orgSpend.gate): what a report may set the slice to. It waits
// out a pending record (an etcd leader election) until ctx is done.
func (b *Books) balanceAsOf(ctx context.Context, o *orgSpend) (lo ledger.Org, seq uint64, err error) {
	err = b.asOf(ctx, o, func() error {
		lo, seq, err = b.local.OrgAsOf(o.id)
		return err
	})
	return lo, seq, err
}

// landed records that a write setting the org's slice from the local
// balance read as of asOf reached etcd: the closed takeover records it
// covers may go (takeover.go).
func (b *Books) landed(o *orgSpend, asOf uint64) {
	b.mu.Lock()
	if asOf > o.asOf {
		o.asOf = asOf
	}
	b.mu.Unlock()
	b.dropCovered(o.id)
}
