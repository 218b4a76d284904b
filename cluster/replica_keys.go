package cluster

import (
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/ledger"
)

// API keys in the shared configuration: config/key/<id> holds one
// ledger.APIKey as JSON — id, name, role, org, the SHA-256 of its secret,
// created, rotated and revoked times. Never the secret (the API shows it
// once and keeps only its hash) and never the last use (kept in each
// node's memory, per node). A key is never deleted: revoking sets
// revoked_at and the record stays, as in a single node's ledger.
//
// Every node's replica applies the records to its ledger (ledger.Apply,
// ChangeKey), where the API authenticates from memory; so a key made,
// rotated or revoked through any node works, or stops working, on every
// node once its watcher has applied the change (the replica lag, a few
// milliseconds on one machine; see the tests). The bootstrap key is not
// here: it is each node's configured admin token.
//
// The ledger sends its key changes here once ShareKeys(replica) is set
// (NewReplica does), deciding them with its own rules (ledger/keys.go) on
// the record read from etcd; the write is one fenced transaction compared
// on the record's mod revision (and, for a new key of an org, the org's
// create revision), decided again when it moved, so of two concurrent
// changes of one key each decides on what the other wrote.
func (k keys) cfgKey(id string) string { return k.prefix + "config/key/" + id }

// ChangeKey is ledger.SharedKeys for the cluster: decide gets the key's
// shared record (nil: none) and the configuration read at the same
// revision; the change answers once the local ledger applied it.
func (r *Replica) ChangeKey(id string, decide func(d ledger.Directory, cur *ledger.APIKey) (*ledger.APIKey, error)) (before, after *ledger.APIKey, err error) {
	if validID("key", id) != nil {
		return nil, nil, fmt.Errorf("%w: %s", ledger.ErrUnknownKey, id) // no key can have it
	}
	key := r.k.cfgKey(id)
	err = r.change("key", func(v *view) ([]clientv3.Cmp, []clientv3.Op, error) {
		before, after = nil, nil
		var cur ledger.APIKey
		kv, ok := v.decode(key, &cur)
		if v.err != nil {
			return nil, nil, nil
		}
		if ok {
			c := cur
			before = &c
		}
		next, err := decide(v, before)
		if err != nil {
			return nil, nil, err
		}
		if v.err != nil {
			return nil, nil, nil // decide read the org; that read failed
		}
		if next == nil || next.ID != id {
			// A bug in the rule: it must return the key it was given.
			return nil, nil, fmt.Errorf("cluster config key %s: the rule returned %v: %w", id, next, ErrInvalid)
		}
		after = next
		rec := encode(next)
		if kv != nil && string(kv.Value) == rec {
			return nil, nil, nil // e.g. revoking a revoked key: nothing to write
		}
		cmps := []clientv3.Cmp{modRevIs(key, kv)}
		if before == nil && next.Org != "" {
			ok := r.k.cfgOrg(next.Org)
			cmps = append(cmps, orgExists(ok, v.get(ok)))
		}
		return cmps, []clientv3.Op{clientv3.OpPut(key, rec)}, nil
	})
	if err != nil {
		return nil, nil, err
	}
	return before, after, nil
}

// *Replica is where a cluster node's ledger sends its key changes.
var _ ledger.SharedKeys = (*Replica)(nil)
