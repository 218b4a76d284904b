package ledger

import (
	"fmt"
	"sort"
	"strings"

	"github.com/cockroachdb/pebble/v2"
	"github.com/shopspring/decimal"
)

// Exactly one CDR per call, cluster-wide (issue 17): the two places where a
// call could get a second one.
//
//   - A survivor's reaper adopts a dead node's CDRs into its own ledger, then
//     records in etcd that it did. If it dies between the two, its successor
//     adopts them again. So a reaper adopts them as pending
//     (AdoptCDRsFor, under a tag naming the claim and the reaper's
//     incarnation: a mark v/{tag}/{call} written in the same durable write
//     as each CDR), and once etcd says whose adoption counts, keeps them
//     (ConfirmAdoptions) or drops them (DropAdoptions: the CDRs, their
//     ended keys and the marks deleted in one durable write). The CDR of
//     record is the one etcd names; a pending one of a reaper that never
//     comes back is on a disk nobody reads.
//   - A node that closed a call in its ledger and died before the closed
//     takeover record reached etcd has that call reaped as live by a
//     survivor, whose CDR is the one of record (its charge is what etcd
//     settled). When the node restarts, Open finds the call in
//     Options.SettledElsewhere with a CDR of its own: that CDR is replaced
//     by the settled-elsewhere marker (h/{call}, the charge its debits here
//     add to), in the restart settlement's one durable operation
//     (supersedeEnded); a refund its close made (etcd never heard of it)
//     is debited again, so the ledger's debits match what etcd settled.

const pendingPrefix = "v/"

func keyPending(tag, call string) []byte { return []byte(pendingPrefix + tag + "/" + call) }

// validTag: a tag is one or more ids joined by "/" or "@" (no empty part).
func validTag(tag string) bool {
	if tag == "" {
		return false
	}
	for _, p := range strings.FieldsFunc(tag, func(r rune) bool { return r == '/' || r == '@' }) {
		if !ValidID(p) {
			return false
		}
	}
	return !strings.HasPrefix(tag, "/") && !strings.HasSuffix(tag, "/") && !strings.Contains(tag, "//")
}

// AdoptCDRsFor adopts cdrs as AdoptCDR does (no money moves; reason
// required; idempotent on the call id), all in one durable write, each new
// one marked pending under tag until ConfirmAdoptions or DropAdoptions. A
// call this ledger has ended already is left as it is (and not marked: it
// is not this adoption's to drop). Refusals, before anything is written:
// ErrInvalid (a bad tag, id, org, reason or charge, a call of that id up
// here).
func (l *Ledger) AdoptCDRsFor(tag string, cdrs []CDR) error {
	if !validTag(tag) {
		return invalidf("adoption tag %q", tag)
	}
	todo := make([]CDR, 0, len(cdrs))
	for _, cdr := range cdrs {
		if !ValidID(cdr.CallID) || !ValidID(cdr.Org) || cdr.DisconnectReason == "" || cdr.Charge.IsNegative() {
			return invalidf("adopt CDR %q of org %q reason %q charge %s", cdr.CallID, cdr.Org, cdr.DisconnectReason, cdr.Charge)
		}
		if _, err := timeKey(cdr.Start); err != nil {
			return fmt.Errorf("%w: adopt CDR %s: %w", ErrInvalid, cdr.CallID, err)
		}
		if !l.endedOnDisk(cdr.CallID) {
			todo = append(todo, cdr)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	_, err := l.do(Op{Kind: "adopt", Call: tag}, l.opts.Now(), func(t *txn) error {
		for _, cdr := range todo {
			if _, up := l.calls[cdr.CallID]; up {
				return invalidf("adopt CDR %s: a call of that id is up on this node", cdr.CallID)
			}
		}
		for _, cdr := range todo {
			if _, ok := l.ended.get(cdr.CallID); ok {
				continue
			}
			cdr.Start, cdr.End = cdr.Start.UTC(), cdr.End.UTC()
			if !cdr.Answer.IsZero() {
				cdr.Answer = cdr.Answer.UTC()
			}
			key := keyCDR(cdr.Org, cdr.Start, cdr.CallID)
			t.put(key, cdr)
			t.raw(keyEnded(cdr.CallID), key)
			t.raw(keyPending(tag, cdr.CallID), key)
			l.ended.add(cdr.CallID, string(key))
		}
		return nil
	})
	return err
}

// PendingAdoptions are the adoptions neither confirmed nor dropped: tag →
// its calls, sorted.
func (l *Ledger) PendingAdoptions() (map[string][]string, error) {
	out := map[string][]string{}
	err := scanRaw(l.db, []byte(pendingPrefix), func(k, _ []byte) error {
		rest := string(k[len(pendingPrefix):])
		i := strings.LastIndexByte(rest, '/')
		if i <= 0 {
			return fmt.Errorf("pending adoption key %q", k)
		}
		out[rest[:i]] = append(out[rest[:i]], rest[i+1:])
		return nil
	})
	for _, ids := range out {
		sort.Strings(ids)
	}
	return out, err
}

// ConfirmAdoptions keeps the CDRs adopted under tag: their pending marks are
// deleted. Idempotent.
func (l *Ledger) ConfirmAdoptions(tag string) error {
	return l.resolveAdoptions(tag, false)
}

// DropAdoptions deletes the CDRs adopted under tag (another node's
// adoption is the one of record), their ended keys and marks, in one
// durable write: the call ids are unknown here again. Idempotent.
func (l *Ledger) DropAdoptions(tag string) error {
	return l.resolveAdoptions(tag, true)
}

func (l *Ledger) resolveAdoptions(tag string, drop bool) error {
	if !validTag(tag) {
		return invalidf("adoption tag %q", tag)
	}
	type mark struct{ key, cdr []byte }
	var marks []mark
	err := scanRaw(l.db, []byte(pendingPrefix+tag+"/"), func(k, v []byte) error {
		marks = append(marks, mark{append([]byte(nil), k...), append([]byte(nil), v...)})
		return nil
	})
	if err != nil || len(marks) == 0 {
		return err
	}
	kind := "adopt-confirm"
	if drop {
		kind = "adopt-drop"
	}
	_, err = l.do(Op{Kind: kind, Call: tag}, l.opts.Now(), func(t *txn) error {
		for _, m := range marks {
			t.del(m.key)
			if !drop {
				continue
			}
			call := string(m.key[len(pendingPrefix)+len(tag)+1:])
			t.del(m.cdr)
			t.del(keyEnded(call))
			l.ended.forget(call)
		}
		return nil
	})
	return err
}

// endedElsewhere lists, sorted, the calls of Options.SettledElsewhere
// that are not up in this ledger (ended here before this start, or never
// known here): the candidates of supersedeEnded. Under l.mu.
func (l *Ledger) endedElsewhere() []string {
	ids := make([]string, 0, len(l.opts.SettledElsewhere))
	for id := range l.opts.SettledElsewhere {
		if _, up := l.calls[id]; !up {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids
}

// supersedeEnded replaces, in the restart settlement's operation t, the
// CDR of each call of ids (endedElsewhere, listed before the settlement
// ended the calls left up) that this ledger ended with a CDR of its own
// (the node closed it, then died before the closed takeover record reached
// etcd; the survivor's CDR is the one of record) by the settled-elsewhere
// marker carrying the charge its debits here add to. A call already
// marked is left alone. It runs after the settlement's loop over the calls
// left up, so that the holds that loop releases count as available to
// chargeExtra. Under l.mu.
func (l *Ledger) supersedeEnded(t *txn, ids []string) ([]CDR, error) {
	var out []CDR
	for _, id := range ids {
		k, found, err := get(l.db, keyEnded(id))
		if err != nil {
			return nil, err
		}
		if !found || isSettledKey(k) {
			continue
		}
		key := append([]byte(nil), k...)
		cdr, err := l.readCDR(key)
		if err != nil {
			return nil, err
		}
		if cdr.DisconnectReason == ReasonNodeFailure {
			continue // adopted here from another node: not this node's own close
		}
		charge := cdr.Charge
		if st, ok := l.orgs[cdr.Org]; ok {
			charge = charge.Add(l.chargeExtra(t, st, id, l.opts.SettledElsewhere[id].Charge.Sub(cdr.Charge)))
		}
		t.put(keySettled(id), settledMarker{Org: cdr.Org, Charge: charge})
		t.raw(keyEnded(id), keySettled(id))
		t.del(key)
		l.ended.add(id, string(keySettled(id)))
		out = append(out, cdr)
	}
	return out, nil
}

// chargeExtra debits the org what the survivor settled a call at beyond
// what this ledger's own close charged it (a refund to its answer, which
// etcd never heard of: the survivor's CDR is the one of record, and its
// charge what etcd counts spent), as far as the org's available balance
// goes — the refunded money is there unless another call held it before
// the node died, and then the survivor's settlement took that from
// unallocated (reap_money.go). It returns what it debited. Under l.mu.
func (l *Ledger) chargeExtra(t *txn, st *orgState, call string, extra decimal.Decimal) decimal.Decimal {
	take := decimal.Min(extra, st.Balance.Sub(st.Held))
	if !take.IsPositive() {
		return decimal.Zero
	}
	if take.LessThan(extra) {
		l.log.Error("a superseded call's extra charge exceeds the available balance; debited what there is",
			"call_id", call, "org", st.ID, "extra", extra.String(), "debited", take.String())
	}
	st.Balance = st.Balance.Sub(take)
	st.Debited = st.Debited.Add(take)
	en := Entry{Seq: t.entrySeq(), At: t.at, Kind: EntryDebit, Amount: take.Neg(), Balance: st.Balance, CallID: call}
	t.put(keyEntry(st.ID, en.Seq), en)
	t.put(keyBalances(st.ID), st.Balances)
	return take
}

// forget drops an id (its CDR was dropped: DropAdoptions).
func (e *endedCalls) forget(id string) {
	delete(e.cur, id)
	delete(e.prev, id)
}

// scanRaw calls fn with every key under prefix and its raw value (valid
// during the call only).
func scanRaw(db *pebble.DB, prefix []byte, fn func(key, val []byte) error) error {
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: upperBound(prefix)})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		if err := fn(it.Key(), it.Value()); err != nil {
			return err
		}
	}
	return it.Error()
}
