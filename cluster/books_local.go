// Books' methods that the local ledger (calls' dialogs and closes,
// lookups, history) or the shared configuration (admin changes) answer.

package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/creditgate/creditgate/ledger"
)

// AnswerDialog answers the call in the local ledger, then writes its
// takeover record (takeover.go) and returns once etcd has it: the gateway
// relays the 200 only after that, so a call a caller hears answered is one
// a survivor can end and settle. Refused once the books failed; a record
// that cannot land fails them (ErrUnavailable: the gateway answers 503).
// Past the local lease deadline it is answered only once etcd confirms
// the lease (closable): a survivor may be reaping this node, and the call
// would be answered here with a record that can no longer land. (Should
// the node die with the record in flight anyway, the restart releases the
// call: ledger.Options.LastReaped.)
func (b *Books) AnswerDialog(callID string, at time.Time, dialog json.RawMessage) error {
	if err := b.closable(); err != nil {
		return fmt.Errorf("answer call %s: %w", callID, err)
	}
	if err := b.local.AnswerDialog(callID, at, dialog); err != nil {
		return err
	}
	if err := b.recordCall(callID, dialog, true); err != nil {
		return fmt.Errorf("answer call %s: %w", callID, b.fail(err))
	}
	return nil
}

// CloseCall ends the call on the local ledger; what it releases or refunds
// stays with this node until the next report (direct mode: given back at
// the next tick). A call with a takeover record (answered, not free) is
// closed only while the node may sell: fenced or past its lease deadline,
// a survivor may be ending and settling it (reap.go), so this node writes
// no CDR of its own (ErrUnavailable; a restart settles it, or knows the
// survivor did). Its record is rewritten as closed, with the CDR, in the
// background (the org's gate entered until it landed, orgSpend.gate): it
// never waits for etcd, so a hang-up's BYEs do not wait for an etcd leader
// election.
func (b *Books) CloseCall(callID string, end ledger.CallEnd) (ledger.CDR, error) {
	b.rec.mu.Lock()
	rec, recorded := b.rec.recs[callID]
	var org string
	if recorded {
		org = rec.Call.Org
		recorded = rec.Closed == nil
	}
	b.rec.mu.Unlock()
	if !recorded {
		cdr, err := b.local.CloseCall(callID, end)
		if err == nil && cdr.Org != "" {
			b.touch(b.org(cdr.Org))
		}
		return cdr, err
	}
	if err := b.closable(); err != nil {
		return ledger.CDR{}, fmt.Errorf("close call %s: %w", callID, err)
	}
	o := b.org(org)
	t := o.gate.enter()
	cdr, err := b.local.CloseCall(callID, end)
	if err != nil {
		o.gate.leave(t)
		return cdr, err
	}
	b.touch(o)
	closed := b.closedRecord(cdr)
	if closed == nil {
		o.gate.leave(t)
		return cdr, nil
	}
	// The closed record lands behind the close (the gate held until then):
	// the legs' BYEs need not wait for etcd. Should the node die first, a
	// survivor reads the call as up and settles it again (doc.go, edges).
	if err := b.writeRecordThen(closed, func() { o.gate.leave(t) }); err != nil {
		return ledger.CDR{}, fmt.Errorf("close call %s: %w", callID, b.fail(err))
	}
	return cdr, nil
}

// writable refuses a change whose takeover record could not land: the
// books failed, or the node knows it is fenced.
func (b *Books) writable() error {
	if err := b.Err(); err != nil {
		return err
	}
	if err := b.n.Sellable(); errors.Is(err, ErrFenced) {
		return b.fail(err)
	}
	return nil
}

// closable says whether a call with a takeover record may be closed here:
// not once the books failed or the node is fenced; past the local lease
// deadline only once etcd confirms the lease still stands (a fenced
// transaction that writes nothing): a survivor acts only after etcd
// removed the member key, and the closed record that follows is written
// fenced too, so the survivor finds it closed or this close fails.
func (b *Books) closable() error {
	if err := b.Err(); err != nil {
		return err
	}
	err := b.n.Sellable()
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrLeaseDeadline):
		if _, _, err := b.n.commit(b.ctx, nil, nil); err != nil {
			return b.fail(err)
		}
		return nil
	default:
		return b.fail(err)
	}
}

// UpdateDialog replaces the dialog record locally, then in the call's
// takeover record (waiting until it landed).
func (b *Books) UpdateDialog(callID string, dialog json.RawMessage) error {
	if err := b.writable(); err != nil {
		return fmt.Errorf("update dialog %s: %w", callID, err)
	}
	if err := b.local.UpdateDialog(callID, dialog); err != nil {
		return err
	}
	if err := b.recordCall(callID, dialog, false); err != nil {
		return fmt.Errorf("update dialog %s: %w", callID, b.fail(err))
	}
	return nil
}

// UpdateDialogPending is UpdateDialog without the wait for the takeover
// record: it returns once the local ledger has the dialog record, with
// landed (nil: the call has no takeover record), which yields once the
// record landed (nil) or could not (the books then failed closed). The
// gateway waits for it without its call's lock (gateway/indialog.go).
// The committer writes a call's latest record (recorder), so a later
// step's or close's record never lands under this one.
func (b *Books) UpdateDialogPending(callID string, dialog json.RawMessage) (<-chan error, error) {
	if err := b.writable(); err != nil {
		return nil, fmt.Errorf("update dialog %s: %w", callID, err)
	}
	if err := b.local.UpdateDialog(callID, dialog); err != nil {
		return nil, err
	}
	landed, err := b.recordCallPending(callID, dialog)
	if err != nil {
		return nil, fmt.Errorf("update dialog %s: %w", callID, b.fail(err))
	}
	return landed, nil
}

func (b *Books) Dialogs() []ledger.Dialog         { return b.local.Dialogs() }
func (b *Books) ForgetDialog(callID string) error { return b.local.ForgetDialog(callID) }
func (b *Books) FraudTripped(tr *ledger.Trip, at time.Time) error {
	if g := b.guard.Load(); g != nil {
		o, err := b.Org(tr.Org)
		if err != nil {
			return nil // an unknown org is no error (ledger.Books)
		}
		return g.Tripped(b.ctx, tr, at, o)
	}
	return b.local.FraudTripped(tr, at)
}
func (b *Books) User(org, id string) (ledger.User, bool) { return b.local.User(org, id) }
func (b *Books) UserByNumber(e164 string) (ledger.User, bool) {
	return b.local.UserByNumber(e164)
}
func (b *Books) TollFreeOwner(number string) (ledger.TollFree, bool) {
	return b.local.TollFreeOwner(number)
}
func (b *Books) TollFreeNumbers(org string) []ledger.TollFree { return b.local.TollFreeNumbers(org) }
func (b *Books) OrgIDs() []string                             { return b.local.OrgIDs() }
func (b *Books) UsersOf(org string) []ledger.User             { return b.local.UsersOf(org) }
func (b *Books) Trunks() []ledger.Trunk                       { return b.local.Trunks() }
func (b *Books) PoolsLeft(org string, at time.Time) (map[string]int, error) {
	return b.local.PoolsLeft(org, at)
}

// PendingPurchaseOf is the org's pending auto-recharge purchase as the
// cluster's payer has it in etcd (purchases.go), once the binary has said
// where that is (UsePurchases); the local ledger starts none (SliceOnly).
func (b *Books) PendingPurchaseOf(org string) string {
	if p := b.purchases.Load(); p != nil {
		return p.PendingRecharge(org)
	}
	return b.local.PendingPurchaseOf(org)
}

// UsePurchases makes PendingPurchaseOf answer from the cluster's purchases.
func (b *Books) UsePurchases(p *Purchases) { b.purchases.Store(p) }

func (b *Books) CreateOrg(o ledger.Org) (ledger.Org, error) { return b.shared.CreateOrg(o) }
func (b *Books) SetBlockPremium(org string, block bool) (ledger.Org, error) {
	return b.shared.SetBlockPremium(org, block)
}
func (b *Books) SetContacts(org string, c ledger.Contacts) (ledger.Org, error) {
	return b.shared.SetContacts(org, c)
}
func (b *Books) SetFraudGuard(org string, fg ledger.FraudGuard) (ledger.Org, error) {
	return b.shared.SetFraudGuard(org, fg)
}
func (b *Books) SetAutoRecharge(org string, ar ledger.AutoRecharge) (ledger.AutoRecharge, error) {
	return b.shared.SetAutoRecharge(org, ar)
}
func (b *Books) PutUser(u ledger.User) error          { return b.shared.PutUser(u) }
func (b *Books) PutTollFree(tf ledger.TollFree) error { return b.shared.PutTollFree(tf) }
func (b *Books) DeleteTollFree(org, number string) (bool, error) {
	return b.shared.DeleteTollFree(org, number)
}
func (b *Books) DeleteUser(org, id string) (bool, error) { return b.shared.DeleteUser(org, id) }
func (b *Books) DeleteTrunk(id string) (bool, error)     { return b.shared.DeleteTrunk(id) }
func (b *Books) PutTrunk(tr ledger.Trunk) error          { return b.shared.PutTrunk(tr) }
func (b *Books) PutDeck(csv []byte) error                { return b.shared.PutDeck(csv) }

func (b *Books) EachCDR(org string, from, to time.Time, fn func(*ledger.CDR) error) error {
	return b.local.EachCDR(org, from, to, fn)
}
func (b *Books) Transactions(org string, after uint64, limit int) ([]ledger.Entry, error) {
	return b.local.Transactions(org, after, limit)
}
func (b *Books) Advise(org string, now time.Time) (ledger.Advice, error) {
	return b.local.Advise(org, now)
}
