// Admin API keys: who may use the API, kept durably with the audit entry
// of every change to them (audit.go). The ledger keeps a key's id, name,
// role, org and the SHA-256 of its secret; it never sees a role's meaning
// (the API's table) nor a secret.

package ledger

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"time"
)

// ErrUnknownKey: no API key has that id.
var ErrUnknownKey = errors.New("unknown API key")

// Limits of API keys.
const (
	// MaxKeys bounds how many keys (revoked ones included, which are kept
	// for the audit trail's sake) the ledger holds in memory.
	MaxKeys       = 100_000
	MaxKeyNameLen = 200
)

// keyIDRE is the shape of a key id the API makes ("key_" and hex); the
// bootstrap key ("bootstrap") is not stored, so it cannot match.
var keyIDRE = regexp.MustCompile(`^key_[0-9a-f]{8,64}$`)

// APIKey is an admin API key as stored.
//
// Invariants: ID is never reused (CreateKey refuses an id taken, revoked
// or not); Role and Org never change after creation; Hash is the SHA-256
// of the one secret that works now (RotateKey replaces it in the same
// durable change as its audit entry, so the old secret stops at once); a
// revoked key stays revoked and stays listed. LastUsedAt is kept in
// memory only (writing it would cost a synced commit per request): it
// starts empty after a restart.
type APIKey struct {
	ID         string    `json:"id"`
	Name       string    `json:"name"`
	Role       string    `json:"role"`
	Org        string    `json:"org,omitempty"`
	Hash       []byte    `json:"hash"`
	CreatedAt  time.Time `json:"created_at"`
	RotatedAt  time.Time `json:"rotated_at,omitzero"`
	RevokedAt  time.Time `json:"revoked_at,omitzero"`
	LastUsedAt time.Time `json:"-"`
}

// Revoked reports whether the key was revoked.
func (k APIKey) Revoked() bool { return !k.RevokedAt.IsZero() }

// keyAudit is a key as its audit entries show it: never the hash.
type keyAudit struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Role      string    `json:"role"`
	Org       string    `json:"org"`
	RotatedAt time.Time `json:"rotated_at,omitzero"`
	RevokedAt time.Time `json:"revoked_at,omitzero"`
}

func (k APIKey) audit() keyAudit {
	return keyAudit{ID: k.ID, Name: k.Name, Role: k.Role, Org: k.Org, RotatedAt: k.RotatedAt, RevokedAt: k.RevokedAt}
}

// keyState is the keys in memory, guarded by Ledger.mu like the rest of
// its state. byID holds every key ever created (revoked ones too); on a
// cluster node, every key of the shared configuration this ledger has
// applied. shared is set once (ShareKeys) before the API serves.
type keyState struct {
	byID   map[string]*APIKey
	shared SharedKeys
}

func keyAPIKey(id string) []byte { return []byte("y/" + id) }

func (l *Ledger) loadKeys() error {
	l.keys.byID = map[string]*APIKey{}
	return scan(l.db, []byte("y/"), func(_ []byte, k *APIKey) error {
		l.keys.byID[k.ID] = k
		return nil
	})
}

// keyRule decides what a key becomes: cur is the key as stored (nil: no
// key has the id), d the configuration to check it against (an org's
// existence), at the change's time. It returns the key as it is to be
// stored, a value of its own (cur is never changed), or a refusal. The same
// rule decides a single node's change (under Ledger.mu, on its own maps)
// and a cluster node's (on the shared record read from etcd: keys_shared.go).
type keyRule func(d Directory, cur *APIKey, at time.Time) (*APIKey, error)

// CreateKey stores a new key and its audit entry in one durable change.
// The entry's kind, org, target, before and after are the ledger's (the
// key as keyAudit, never its hash); the caller gives who, when, action and
// via. Refusals: ErrInvalid (a bad id, name, role or hash; an id taken;
// MaxKeys reached; a bad entry), ErrUnknownOrg (k.Org set and unknown).
func (l *Ledger) CreateKey(k APIKey, a AuditEntry) (AuditEntry, error) {
	switch {
	case !keyIDRE.MatchString(k.ID):
		return AuditEntry{}, invalidf("key id %q: want key_ and hex", k.ID)
	case len(k.Name) > MaxKeyNameLen:
		return AuditEntry{}, invalidf("key name: at most %d characters", MaxKeyNameLen)
	case k.Role == "" || len(k.Role) > MaxIDLength:
		return AuditEntry{}, invalidf("key role %q", k.Role)
	case len(k.Hash) != sha256.Size:
		return AuditEntry{}, invalidf("key hash: want a SHA-256")
	}
	k.RotatedAt, k.RevokedAt, k.LastUsedAt = time.Time{}, time.Time{}, time.Time{}
	a.Kind, a.Org, a.Target = AuditKey, k.Org, k.ID
	return l.keyChange(Op{Kind: "create_key", Org: k.Org, Key: k.ID}, k.ID, a, func(d Directory, cur *APIKey, at time.Time) (*APIKey, error) {
		if cur != nil {
			return nil, invalidf("key id %s is taken", k.ID)
		}
		if k.Org != "" {
			if _, ok := d.LookupOrg(k.Org); !ok {
				return nil, fmt.Errorf("%w: %s", ErrUnknownOrg, k.Org)
			}
		}
		nk := k
		nk.CreatedAt = at
		nk.Hash = append([]byte(nil), k.Hash...)
		return &nk, nil
	})
}

// RotateKey gives the key a new secret (its hash), the old one stopping
// at once, in one durable change with its audit entry. Refusals:
// ErrUnknownKey, ErrInvalid (revoked, a bad hash, a bad entry).
func (l *Ledger) RotateKey(id string, hash []byte, a AuditEntry) (AuditEntry, error) {
	if len(hash) != sha256.Size {
		return AuditEntry{}, invalidf("key hash: want a SHA-256")
	}
	a.Kind, a.Target = AuditKey, id
	return l.keyChange(Op{Kind: "rotate_key", Key: id}, id, a, func(_ Directory, cur *APIKey, at time.Time) (*APIKey, error) {
		if cur == nil {
			return nil, fmt.Errorf("%w: %s", ErrUnknownKey, id)
		}
		if cur.Revoked() {
			return nil, invalidf("key %s is revoked; create a new one", id)
		}
		nk := *cur
		nk.Hash = append([]byte(nil), hash...)
		nk.RotatedAt = at
		return &nk, nil
	})
}

// RevokeKey revokes the key at once, in one durable change with its audit
// entry; it stays listed. Idempotent: revoking a revoked key keeps its
// first RevokedAt (and still journals the request). Refusals:
// ErrUnknownKey, ErrInvalid (a bad entry).
func (l *Ledger) RevokeKey(id string, a AuditEntry) (AuditEntry, error) {
	a.Kind, a.Target = AuditKey, id
	return l.keyChange(Op{Kind: "revoke_key", Key: id}, id, a, func(_ Directory, cur *APIKey, at time.Time) (*APIKey, error) {
		if cur == nil {
			return nil, fmt.Errorf("%w: %s", ErrUnknownKey, id)
		}
		nk := *cur
		if !nk.Revoked() {
			nk.RevokedAt = at
		}
		return &nk, nil
	})
}

// keyChange runs one change to key id and journals it. On a single node
// the rule decides on the ledger's own keys under Ledger.mu, and the key's
// record and the audit entry are written in the same operation, so both
// are durable or neither is. On a cluster node (ShareKeys) the shared
// record is changed instead and the entry written after (keys_shared.go).
func (l *Ledger) keyChange(op Op, id string, a AuditEntry, rule keyRule) (AuditEntry, error) {
	at := a.At
	if at.IsZero() {
		at = l.opts.Now()
	}
	at = at.UTC()
	a.At = at
	l.mu.Lock()
	shared := l.keys.shared
	l.mu.Unlock()
	if shared != nil {
		return l.sharedKeyChange(shared, id, a, rule)
	}
	var out AuditEntry
	_, err := l.do(op, at, func(t *txn) error {
		if err := a.check(); err != nil {
			return err
		}
		var before *APIKey
		if cur, ok := l.keys.byID[id]; ok {
			c := *cur
			before = &c
		}
		after, err := rule(memDirectory{l}, before, t.at)
		if err != nil {
			return err
		}
		if before == nil && len(l.keys.byID) >= MaxKeys {
			return invalidf("at most %d keys, revoked ones included", MaxKeys)
		}
		if before != nil {
			after.LastUsedAt = before.LastUsedAt
		}
		l.keys.byID[id] = after
		a.Org = after.Org
		a.Before, a.After = nil, nil
		if before != nil {
			a.Before = mustJSON(before.audit())
		}
		a.After = mustJSON(after.audit())
		t.put(keyAPIKey(after.ID), *after)
		out = l.journal(t, a)
		return nil
	})
	return out, err
}

// Key returns a key by id (a copy).
func (l *Ledger) Key(id string) (APIKey, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k, ok := l.keys.byID[id]
	if !ok {
		return APIKey{}, false
	}
	return *k, true
}

// Keys lists every key, revoked ones too, sorted by id.
func (l *Ledger) Keys() []APIKey {
	l.mu.Lock()
	out := make([]APIKey, 0, len(l.keys.byID))
	for _, k := range l.keys.byID {
		out = append(out, *k)
	}
	l.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// KeyUsed records in memory that a key authenticated a request at at (never
// moving back); it is not durable.
func (l *Ledger) KeyUsed(id string, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if k, ok := l.keys.byID[id]; ok && at.After(k.LastUsedAt) {
		k.LastUsedAt = at.UTC()
	}
}
