// API keys on a cluster node: the keys of record are the cluster's shared
// configuration (package cluster, replica_keys.go), so a key made, rotated
// or revoked through any node works, or stops working, on every node. The
// ledger keeps applying them (Apply, ChangeKey) and answering Key and Keys
// from memory, so authenticating a request costs no network round trip.

package ledger

import (
	"fmt"
	"slices"
	"time"
)

// SharedKeys is where a cluster node's key changes go.
type SharedKeys interface {
	// ChangeKey reads key id's shared record (cur nil: none), has decide
	// say what it becomes (decide checks it against d, the shared
	// configuration read at the same revision, and may refuse), and writes
	// it so that exactly one of two concurrent changes of one key decides
	// on the record the other wrote. It returns once this ledger has
	// applied the record (Apply), with the key before (nil: none) and
	// after. A change that leaves the record as it was writes nothing.
	// Refusals: decide's, ErrUnavailable (the change may or may not have
	// been made).
	ChangeKey(id string, decide func(d Directory, cur *APIKey) (*APIKey, error)) (before, after *APIKey, err error)
}

// ShareKeys makes the ledger's key changes (CreateKey, RotateKey,
// RevokeKey) go to s, a cluster node's shared configuration, instead of
// its own store; the keys come back through Apply like every shared
// record. Call it once, before the API serves. The audit entry of a
// shared key change is then an operation of its own, written after the
// change took effect, as for every other change a cluster node makes: a
// crash between the two leaves the change without its entry, and an entry
// that cannot be written is logged in full ("audit entry lost") and the
// caller told the change was made (ErrUnavailable).
func (l *Ledger) ShareKeys(s SharedKeys) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.keys.shared = s
}

// sharedKeyChange is keyChange on a cluster node. MaxKeys is counted on
// this node's applied keys (the cluster's, within the replica's lag).
func (l *Ledger) sharedKeyChange(s SharedKeys, id string, a AuditEntry, rule keyRule) (AuditEntry, error) {
	if err := a.check(); err != nil {
		return AuditEntry{}, err
	}
	before, after, err := s.ChangeKey(id, func(d Directory, cur *APIKey) (*APIKey, error) {
		next, err := rule(d, cur, a.At)
		if err != nil {
			return nil, err
		}
		if cur == nil {
			l.mu.Lock()
			n := len(l.keys.byID)
			l.mu.Unlock()
			if n >= MaxKeys {
				return nil, invalidf("at most %d keys, revoked ones included", MaxKeys)
			}
		}
		return next, nil
	})
	if err != nil {
		return AuditEntry{}, err
	}
	a.Org = after.Org
	a.Before, a.After = nil, nil
	if before != nil {
		a.Before = mustJSON(before.audit())
	}
	a.After = mustJSON(after.audit())
	out, err := l.Audit(a)
	if err != nil {
		l.log.Error("audit entry lost: the change was made, its entry could not be written", "error", err,
			"key_id", a.KeyID, "role", a.Role, "org", a.Org, "kind", a.Kind, "action", a.Action, "target", a.Target,
			"before", string(a.Before), "after", string(a.After), "via", a.Via)
		return AuditEntry{}, fmt.Errorf("%w: the key change was made but its audit entry could not be written: %v", ErrUnavailable, err)
	}
	return out, nil
}

// applyKey makes the ledger hold a key as the shared configuration has it
// (under Ledger.mu, inside Apply). The in-memory LastUsedAt stays; a key
// is never deleted (a revoked one stays listed).
func (l *Ledger) applyKey(t *txn, k APIKey) {
	k.Hash = slices.Clone(k.Hash)
	k.LastUsedAt = time.Time{}
	if cur, ok := l.keys.byID[k.ID]; ok {
		k.LastUsedAt = cur.LastUsedAt
	}
	l.keys.byID[k.ID] = &k
	t.put(keyAPIKey(k.ID), k)
}
