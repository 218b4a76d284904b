// Books' side of the takeover records (takeover.go): a step that returns
// once its record landed, the balance a report reads under the org's gate
// (orgSpend.gate), and the closed records a landed report lets go.

package cluster

import (
	"fmt"
	"time"

	"github.com/creditgate/creditgate/ledger"
)

// stepRecorded is the local step and the call's takeover record after it,
// under the org's gate (orgSpend.gate): the step returns once the record
// landed. A record that cannot land fails the books closed and the step
// with ErrUnavailable (the gateway ends the call).
//
// A refused step (the call must end now) does not wait: its record lands
// behind it, the gate held until then. Should the node die first, the
// record a survivor reads holds increment n, which the step committed:
// the same final charge.
func (b *Books) stepRecorded(o *orgSpend, callID string, n int, at time.Time, live ledger.Liveness) (ledger.Increment, error) {
	o.gate.RLock()
	inc, err := b.local.StepAlive(callID, n, at, live)
	rec, rerr := b.nextRecord(callID, nil, false)
	switch {
	case rerr != nil:
		o.gate.RUnlock()
		return ledger.Increment{}, fmt.Errorf("step call %s: %w", callID, b.fail(rerr))
	case rec == nil:
		o.gate.RUnlock()
		return inc, err
	case err != nil:
		if werr := b.writeRecordThen(rec, o.gate.RUnlock); werr != nil {
			return ledger.Increment{}, fmt.Errorf("step call %s: %w", callID, b.fail(werr))
		}
		return inc, err
	}
	werr := b.writeRecord(rec)
	o.gate.RUnlock()
	if werr != nil {
		return ledger.Increment{}, fmt.Errorf("step call %s: %w", callID, b.fail(werr))
	}
	return inc, nil
}

// balanceAsOf reads the org's local balance and the ledger's sequence
// number at one instant, with no step or close between its local change and
// its record landing (orgSpend.gate): what a report may set the slice to.
func (b *Books) balanceAsOf(o *orgSpend) (ledger.Org, uint64, error) {
	o.gate.Lock()
	defer o.gate.Unlock()
	return b.local.OrgAsOf(o.id)
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
