// The audit trail: who changed what through the admin API, when, and the
// object before and after, journaled durably and read back by sequence.

package ledger

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"time"
	"unicode/utf8"

	"github.com/cockroachdb/pebble/v2"
)

// Audit kinds: what an entry changed. The API picks one per route.
const (
	AuditOrg          = "org"
	AuditUser         = "user"
	AuditLicense      = "license" // unused today: a license change is a user entry (README, Audit trail)
	AuditTrunk        = "trunk"
	AuditTollFree     = "toll_free"
	AuditDeck         = "deck"
	AuditFraudGuard   = "fraud_guard"
	AuditAutoRecharge = "auto_recharge"
	AuditContacts     = "contacts"
	AuditFunding      = "funding"
	AuditCall         = "call"
	AuditKey          = "key"
)

// AuditKinds are every kind, in the order the README lists them.
var AuditKinds = []string{AuditOrg, AuditUser, AuditLicense, AuditTrunk, AuditTollFree, AuditDeck, AuditFraudGuard,
	AuditAutoRecharge, AuditContacts, AuditFunding, AuditCall, AuditKey}

// Limits of one audit entry: the API's JSON bodies are at most 64 KiB, so
// an object's before or after fits with room to spare.
const (
	MaxAuditState = 256 << 10
	maxAuditText  = 1024
)

// AuditEntry is one change: who (the key and its role at the time), when,
// what (kind, the route's method and path template, the target's ids) and
// the object before and after (JSON, null when it did not exist or no
// longer does). Via is a label the caller gives ("api", "console"),
// not an authenticated fact.
//
// Invariants: Seq is unique and increasing in the order the ledger applied
// the entries (it is the number of the ledger operation that journaled
// it, so the sequence has gaps); an entry is never changed or deleted
// once written.
type AuditEntry struct {
	Seq    uint64          `json:"seq"`
	At     time.Time       `json:"at"`
	KeyID  string          `json:"key_id"`
	Role   string          `json:"role"`
	Org    string          `json:"org"`
	Kind   string          `json:"kind"`
	Action string          `json:"action"`
	Target string          `json:"target"`
	Before json.RawMessage `json:"before"`
	After  json.RawMessage `json:"after"`
	Via    string          `json:"via"`
}

func keyAuditEntry(seq uint64) []byte { return binary.BigEndian.AppendUint64([]byte("j/"), seq) }

func (a AuditEntry) check() error {
	for name, s := range map[string]string{"key_id": a.KeyID, "role": a.Role, "kind": a.Kind, "action": a.Action} {
		if s == "" {
			return invalidf("audit entry without %s", name)
		}
	}
	for name, s := range map[string]string{"key_id": a.KeyID, "role": a.Role, "org": a.Org, "kind": a.Kind,
		"action": a.Action, "target": a.Target, "via": a.Via} {
		if len(s) > maxAuditText || !utf8.ValidString(s) {
			return invalidf("audit entry %s: at most %d bytes of UTF-8", name, maxAuditText)
		}
	}
	for name, v := range map[string]json.RawMessage{"before": a.Before, "after": a.After} {
		if len(v) > MaxAuditState {
			return invalidf("audit entry %s: at most %d bytes", name, MaxAuditState)
		}
		if len(v) > 0 && !json.Valid(v) {
			return invalidf("audit entry %s: not JSON", name)
		}
	}
	return nil
}

// journal writes the entry as part of the operation t (under Ledger.mu),
// numbered with the operation's sequence number.
func (l *Ledger) journal(t *txn, a AuditEntry) AuditEntry {
	a.Seq = t.seq
	a.At = a.At.UTC()
	if len(a.Before) == 0 {
		a.Before = json.RawMessage("null")
	}
	if len(a.After) == 0 {
		a.After = json.RawMessage("null")
	}
	t.put(keyAuditEntry(a.Seq), a)
	return a
}

// Audit journals one change made elsewhere (an org, a user, a call…): a
// durable operation of its own, acknowledged once synced. At zero is the
// ledger's clock. Refusals: ErrInvalid (a bad entry), ErrUnavailable.
func (l *Ledger) Audit(a AuditEntry) (AuditEntry, error) {
	if a.At.IsZero() {
		a.At = l.opts.Now()
	}
	a.At = a.At.UTC()
	if err := a.check(); err != nil {
		return AuditEntry{}, err
	}
	var out AuditEntry
	_, err := l.do(Op{Kind: "audit", Org: a.Org, Key: a.Action}, a.At, func(t *txn) error {
		out = l.journal(t, a)
		return nil
	})
	return out, err
}

// AuditFilter selects entries; an empty field selects all.
type AuditFilter struct {
	Org, Kind, KeyID string
}

func (f AuditFilter) match(a *AuditEntry) bool {
	return (f.Org == "" || a.Org == f.Org) && (f.Kind == "" || a.Kind == f.Kind) && (f.KeyID == "" || a.KeyID == f.KeyID)
}

// MaxAuditScan bounds the entries one AuditEntries call reads, so a filter
// that matches little cannot make one request read the whole journal.
const MaxAuditScan = 100_000

// AuditEntries returns up to limit entries matching f with Seq above after,
// oldest first, read from the store. next is the cursor to read on from
// (the Seq of the last entry read, matching or not) when the page stopped
// at limit or at MaxAuditScan entries read; 0 when the journal has no more.
func (l *Ledger) AuditEntries(f AuditFilter, after uint64, limit int) (out []AuditEntry, next uint64, err error) {
	if limit <= 0 || after == math.MaxUint64 {
		return nil, 0, nil
	}
	prefix := []byte("j/")
	it, err := l.db.NewIter(&pebble.IterOptions{LowerBound: keyAuditEntry(after + 1), UpperBound: upperBound(prefix)})
	if err != nil {
		return nil, 0, err
	}
	defer it.Close()
	scanned := 0
	for ok := it.First(); ok; ok = it.Next() {
		var a AuditEntry
		if err := decodeRecord(it.Key(), it.Value(), &a); err != nil {
			return nil, 0, err
		}
		scanned++
		if f.match(&a) {
			out = append(out, a)
		}
		if len(out) == limit || scanned == MaxAuditScan {
			// More may follow: the caller pages on from here.
			if it.Next() {
				next = a.Seq
			}
			break
		}
	}
	if err := it.Error(); err != nil {
		return nil, 0, fmt.Errorf("read audit journal: %w", err)
	}
	return out, next, nil
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		// Only our own plain structs come here; failing is a bug.
		panic(fmt.Sprintf("ledger: audit state: %v", err))
	}
	return b
}
