package ledger

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func hashOf(s string) []byte { h := sha256.Sum256([]byte(s)); return h[:] }

func who(action string) AuditEntry {
	return AuditEntry{KeyID: "bootstrap", Role: "operator_admin", Action: action, Via: "api"}
}

// TestKeysAndTheirAuditSurviveARestart: a key's creation, rotation and
// revocation each write the key and one audit entry in one operation;
// refusals write neither; after a restart the keys (hash, rotation,
// revocation) and the journal read back the same, and the journal goes on
// numbering after the entries it has.
func TestKeysAndTheirAuditSurviveARestart(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir)
	newOrg(t, l, "acme", "")

	if _, err := l.CreateKey(APIKey{ID: "key_00000001", Name: "desk", Role: "org_admin", Org: "nope", Hash: hashOf("a")},
		who("POST /v1/keys")); !errors.Is(err, ErrUnknownOrg) {
		t.Fatalf("a key of an unknown org: %v", err)
	}
	if _, err := l.CreateKey(APIKey{ID: "bootstrap", Role: "operator_admin", Hash: hashOf("a")}, who("POST /v1/keys")); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a key id the API does not make: %v", err)
	}
	e, err := l.CreateKey(APIKey{ID: "key_00000001", Name: "desk", Role: "org_admin", Org: "acme", Hash: hashOf("a")}, who("POST /v1/keys"))
	if err != nil {
		t.Fatal(err)
	}
	if e.Kind != AuditKey || e.Org != "acme" || e.Target != "key_00000001" || string(e.Before) != "null" || e.Seq == 0 {
		t.Fatalf("create's entry %+v", e)
	}
	if _, err := l.CreateKey(APIKey{ID: "key_00000001", Name: "again", Role: "org_read", Org: "acme", Hash: hashOf("b")},
		who("POST /v1/keys")); !errors.Is(err, ErrInvalid) {
		t.Fatalf("an id taken: %v", err)
	}
	if _, err := l.RotateKey("key_00000001", hashOf("b"), who("POST /v1/keys/{id}/rotate")); err != nil {
		t.Fatal(err)
	}
	if _, err := l.RotateKey("key_99", hashOf("c"), who("POST /v1/keys/{id}/rotate")); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("rotate an unknown key: %v", err)
	}
	if _, err := l.CreateKey(APIKey{ID: "key_00000002", Name: "ops", Role: "operator_read", Hash: hashOf("d")}, who("POST /v1/keys")); err != nil {
		t.Fatal(err)
	}
	r1, err := l.RevokeKey("key_00000002", who("DELETE /v1/keys/{id}"))
	if err != nil {
		t.Fatal(err)
	}
	r2, err := l.RevokeKey("key_00000002", who("DELETE /v1/keys/{id}"))
	if err != nil {
		t.Fatal(err)
	}
	if string(r1.After) != string(r2.After) || string(r2.Before) != string(r2.After) {
		t.Fatalf("a second revoke moved revoked_at: %s then %s → %s", r1.After, r2.Before, r2.After)
	}
	if _, err := l.RotateKey("key_00000002", hashOf("e"), who("POST /v1/keys/{id}/rotate")); !errors.Is(err, ErrInvalid) {
		t.Fatalf("rotate a revoked key: %v", err)
	}
	if _, err := l.Audit(AuditEntry{KeyID: "bootstrap", Role: "operator_admin", Kind: AuditOrg, Action: "PATCH /v1/orgs/{org}",
		Org: "acme", Before: []byte(`{"x":`)}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("an entry whose before is not JSON: %v", err)
	}
	if _, err := l.Audit(AuditEntry{KeyID: "bootstrap", Role: "operator_admin", Kind: AuditOrg, Action: "PATCH /v1/orgs/{org}",
		Org: "acme", Target: "acme", Before: []byte(`{"block_premium":false}`), After: []byte(`{"block_premium":true}`)}); err != nil {
		t.Fatal(err)
	}
	entries, next, err := l.AuditEntries(AuditFilter{}, 0, 100)
	if err != nil || next != 0 {
		t.Fatal(err, next)
	}
	// create, rotate, create, revoke, revoke, the PATCH: refusals left none.
	if len(entries) != 6 {
		t.Fatalf("%d entries, want 6: %+v", len(entries), entries)
	}
	for _, e := range entries {
		if bytes.Contains(e.Before, []byte("hash")) || bytes.Contains(e.After, []byte("hash")) {
			t.Fatalf("an entry shows a key's hash: %+v", e)
		}
	}
	k1, _ := l.Key("key_00000001")
	check(t, l)
	must(t, l.Close())

	l = open(t, dir)
	defer l.Close()
	k, ok := l.Key("key_00000001")
	if !ok || !bytes.Equal(k.Hash, hashOf("b")) || k.RotatedAt.IsZero() || k.Revoked() || !k.CreatedAt.Equal(k1.CreatedAt) {
		t.Fatalf("after a restart key_00000001 is %+v", k)
	}
	if k, ok := l.Key("key_00000002"); !ok || !k.Revoked() {
		t.Fatalf("after a restart key_00000002 is %+v", k)
	}
	again, _, err := l.AuditEntries(AuditFilter{}, 0, 100)
	if err != nil || fmt.Sprint(again) != fmt.Sprint(entries) {
		t.Fatalf("the journal after a restart:\n%v\nbefore:\n%v", again, entries)
	}
	e, err = l.Audit(AuditEntry{KeyID: "bootstrap", Role: "operator_admin", Kind: AuditDeck, Action: "PUT /v1/rates"})
	if err != nil || e.Seq <= entries[len(entries)-1].Seq {
		t.Fatalf("the first entry after a restart: %+v %v (last before: %d)", e, err, entries[len(entries)-1].Seq)
	}
}

// TestAuditFiltersAndPages: filters by org, kind and key; pages by seq
// neither skip nor repeat an entry.
func TestAuditFiltersAndPages(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	want := map[string]int{}
	for i := range 25 {
		org := []string{"acme", "globex"}[i%2]
		kind := []string{AuditUser, AuditFunding, AuditTrunk}[i%3]
		key := fmt.Sprintf("key_%08x", i%4)
		if _, err := l.Audit(AuditEntry{KeyID: key, Role: "operator_admin", Org: org, Kind: kind, Action: "X /y", Target: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
		want["org="+org]++
		want["kind="+kind]++
		want["key="+key]++
	}
	for filter, n := range want {
		name, v, _ := strings.Cut(filter, "=")
		f := map[string]AuditFilter{"org": {Org: v}, "kind": {Kind: v}, "key": {KeyID: v}}[name]
		var got []AuditEntry
		after := uint64(0)
		for pages := 0; ; pages++ {
			es, next, err := l.AuditEntries(f, after, 2)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range es {
				if !f.match(&e) {
					t.Fatalf("%s: entry %+v", filter, e)
				}
				if len(got) > 0 && e.Seq <= got[len(got)-1].Seq {
					t.Fatalf("%s: seq %d after %d", filter, e.Seq, got[len(got)-1].Seq)
				}
			}
			got = append(got, es...)
			if next == 0 {
				break
			}
			if next <= after || pages > 30 {
				t.Fatalf("%s: the cursor does not advance (%d after %d)", filter, next, after)
			}
			after = next
		}
		if len(got) != n {
			t.Fatalf("%s: %d entries, want %d", filter, len(got), n)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// BenchmarkAuditAppend: what journaling a change costs, next to the change
// itself, in the same run: an admin change through the API is its ledger
// operation (here SetBlockPremium, one synced commit) and then its audit
// entry (Audit, one more). Sequential, so each pays its own fsync.
func BenchmarkAuditAppend(b *testing.B) {
	l := open(b, b.TempDir())
	defer l.Close()
	newOrg(b, l, "acme", "")
	before := []byte(`{"block_premium":false,"contacts":{"emails":[],"webhook_signed":false}}`)
	b.Run("change", func(b *testing.B) {
		for i := range b.N {
			if _, err := l.SetBlockPremium("acme", i%2 == 0); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("audit", func(b *testing.B) {
		for range b.N {
			if _, err := l.Audit(AuditEntry{KeyID: "key_00000001", Role: "org_admin", Org: "acme", Kind: AuditOrg,
				Action: "PATCH /v1/orgs/{org}", Target: "acme", Before: before, After: before}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
