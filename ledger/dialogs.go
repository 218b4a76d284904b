package ledger

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// A call the gateway answered must never run on after the gateway dies: the
// money stops with the process, the legs do not. So the SIP side hands the
// ledger, with the answer, what it takes to end both legs without their
// sessions (dialog ids and tags, route sets, remote targets, CSeq); the
// record is opaque JSON here. It outlives the call's settlement and goes only
// when the SIP side says its BYEs are done (ForgetDialog), so a crash between
// settling a call and hanging it up still leaves the record to act on.

// Dialog is one call's dialog record.
type Dialog struct {
	Call string
	Data json.RawMessage
}

// Dialogs are the dialog records the last run left: calls that were up when
// it stopped (now settled, as every open call is on start) and calls it
// ended without confirming their BYEs. The SIP side ends their legs and then
// forgets them.
func (l *Ledger) Dialogs() []Dialog {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Dialog(nil), l.dialogs...)
}

// UpdateDialog rewrites a call's dialog record while the call is up, e.g.
// after an in-dialog request moved a leg's CSeq on. It is refused once the
// call has ended, so a late update cannot bring back a forgotten record.
func (l *Ledger) UpdateDialog(callID string, dialog json.RawMessage) error {
	if !json.Valid(dialog) {
		return invalidf("call %s: dialog record is not JSON", callID)
	}
	_, err := l.do(Op{Kind: "dialog", Call: callID}, l.opts.Now(), func(t *txn) error {
		c, _, err := l.callFor(callID)
		if err != nil {
			return err
		}
		if !c.Answered() {
			return invalidf("call %s: not answered, it has no dialog record", callID)
		}
		t.raw(keyDialog(c.ID), bytes.Clone(dialog))
		return nil
	})
	return err
}

// ForgetDialog drops a call's dialog record once its legs are ended. It does
// not wait for the disk: if the deletion is lost in a crash, the next start
// sends BYEs that get 481, which costs nothing. It must come after the
// operation that wrote the record has returned.
func (l *Ledger) ForgetDialog(callID string) error {
	if err := l.db.Delete(keyDialog(callID), pebble.NoSync); err != nil {
		return fmt.Errorf("%w: forget dialog %s: %v", ErrUnavailable, callID, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, d := range l.dialogs {
		if d.Call == callID {
			l.dialogs = append(l.dialogs[:i], l.dialogs[i+1:]...)
			break
		}
	}
	return nil
}

func (l *Ledger) loadDialogs() error {
	return scan(l.db, []byte("g/"), func(k []byte, d *json.RawMessage) error {
		l.dialogs = append(l.dialogs, Dialog{Call: string(k[2:]), Data: *d})
		return nil
	})
}
