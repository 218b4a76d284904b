package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/ledger"
)

// keyHash is the SHA-256 of a made-up secret, as the API stores it.
func keyHash(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// keyEntry is an audit entry's who, what and how, as the API gives it.
func keyEntry(action string) ledger.AuditEntry {
	return ledger.AuditEntry{KeyID: "bootstrap", Role: "operator_admin", Action: action, Via: "api"}
}

// keyEntries is every audit entry of kind key in l.
func keyEntries(t testing.TB, l *ledger.Ledger) []ledger.AuditEntry {
	t.Helper()
	es, _, err := l.AuditEntries(ledger.AuditFilter{Kind: ledger.AuditKey}, 0, 1000)
	must(t, err)
	return es
}

// keysAgree fails unless every ledger holds the same keys (last use aside,
// which is each node's own).
func keysAgree(t testing.TB, nodes []*replicaNode) {
	t.Helper()
	dump := func(l *ledger.Ledger) string {
		ks := l.Keys()
		for i := range ks {
			ks[i].LastUsedAt = time.Time{}
		}
		b, err := json.Marshal(ks)
		must(t, err)
		return string(b)
	}
	want := dump(nodes[0].l)
	for _, rn := range nodes[1:] {
		if got := dump(rn.l); got != want {
			t.Fatalf("node %s holds other keys than %s:\n%s\n%s", rn.n.ID(), nodes[0].n.ID(), got, want)
		}
	}
}

// TestReplicaKeysAcrossNodes: API keys are shared records. A key made
// through node 1 authenticates (the ledger's Key, with its hash) on nodes
// 2 and 3 once they applied node 1's revision; rotated through node 2, the
// old hash is gone everywhere; revoked through node 3, node 1 sees it
// revoked. The replica lag of each is measured. Each change's audit entry
// is on the node that made it only; neither the audit entries nor etcd's
// record hold anything but the hash of the secret. Refusals are the
// single-node ledger's, and change nothing in etcd. A node restarted after
// key changes converges; a fenced node's key change is refused.
func TestReplicaKeysAcrossNodes(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	var nodes []*replicaNode
	for i := 0; i < 3; i++ {
		nodes = append(nodes, startReplica(t, memberClient(t, ec.Members[0]), fmt.Sprintf("n%d", i+1), t.TempDir()))
	}
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	cli := ec.Client()
	defer cli.Close()
	if _, err := n1.r.CreateOrg(ledger.Org{ID: "acme", Name: "Acme", Country: "US"}); err != nil {
		t.Fatal(err)
	}
	// lagTo measures how long after a change returned on from the others
	// have applied it, and checks see on each.
	var lags []time.Duration
	lagTo := func(from *replicaNode, what string, see func(k ledger.APIKey, ok bool) bool, id string) {
		t.Helper()
		target, returned := from.r.Applied(), time.Now()
		for _, rn := range nodes {
			if rn == from {
				continue
			}
			must(t, rn.r.await(target))
			lag := time.Since(returned)
			if k, ok := rn.l.Key(id); !see(k, ok) {
				t.Fatalf("%s through %s: node %s holds %+v (%v)", what, from.n.ID(), rn.n.ID(), k, ok)
			}
			lags = append(lags, lag)
		}
	}

	// Create through node 1.
	const id = "key_0123456789abcdef"
	h1 := keyHash("cgk_0123456789abcdef_first")
	e, err := n1.l.CreateKey(ledger.APIKey{ID: id, Name: "it desk", Role: "org_admin", Org: "acme", Hash: h1}, keyEntry("POST /v1/keys"))
	must(t, err)
	if k, ok := n1.l.Key(id); !ok || !slices.Equal(k.Hash, h1) || k.Org != "acme" || !k.CreatedAt.Equal(e.At) {
		t.Fatalf("node 1 after its own create: %+v %v (entry %+v)", k, ok, e)
	}
	lagTo(n1, "create", func(k ledger.APIKey, ok bool) bool {
		return ok && slices.Equal(k.Hash, h1) && k.Role == "org_admin" && k.Org == "acme" && !k.Revoked()
	}, id)

	// What etcd holds: the record's fields, the hash, nothing else.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, n1.r.k.cfgKey(id))
	must(t, err)
	if len(resp.Kvs) != 1 {
		t.Fatalf("etcd has %d records of the key", len(resp.Kvs))
	}
	var rec map[string]any
	must(t, json.Unmarshal(resp.Kvs[0].Value, &rec))
	var fields []string
	for f := range rec {
		fields = append(fields, f)
	}
	sort.Strings(fields)
	if strings.Join(fields, ",") != "created_at,hash,id,name,org,role" || rec["hash"] != base64.StdEncoding.EncodeToString(h1) {
		t.Fatalf("etcd's key record: %s", resp.Kvs[0].Value)
	}

	// Rotate through node 2: the first hash is gone everywhere.
	h2 := keyHash("cgk_0123456789abcdef_second")
	_, err = n2.l.RotateKey(id, h2, keyEntry("POST /v1/keys/{id}/rotate"))
	must(t, err)
	lagTo(n2, "rotate", func(k ledger.APIKey, ok bool) bool { return ok && slices.Equal(k.Hash, h2) && !k.RotatedAt.IsZero() }, id)

	// Revoke through node 3: revoked on node 1.
	_, err = n3.l.RevokeKey(id, keyEntry("DELETE /v1/keys/{id}"))
	must(t, err)
	lagTo(n3, "revoke", func(k ledger.APIKey, ok bool) bool { return ok && k.Revoked() }, id)
	revokedAt := func() time.Time { k, _ := n1.l.Key(id); return k.RevokedAt }()

	// Revoking again through node 1: idempotent, no write, still journaled.
	rev := storeRevision(t, cli)
	_, err = n1.l.RevokeKey(id, keyEntry("DELETE /v1/keys/{id}"))
	must(t, err)
	if got := storeRevision(t, cli); got != rev {
		t.Fatalf("revoking a revoked key moved etcd from %d to %d", rev, got)
	}
	if k, _ := n2.l.Key(id); !k.RevokedAt.Equal(revokedAt) {
		t.Fatalf("a second revoke moved revoked_at from %v to %v", revokedAt, k.RevokedAt)
	}

	// Refusals: the single-node ledger's, and etcd untouched.
	plain := openReplicaLedger(t, t.TempDir())
	defer plain.Close()
	_, err = plain.CreateOrg(ledger.Org{ID: "acme", Name: "Acme", Country: "US"})
	must(t, err)
	_, err = plain.CreateKey(ledger.APIKey{ID: id, Name: "it desk", Role: "org_admin", Org: "acme", Hash: h1}, keyEntry("POST /v1/keys"))
	must(t, err)
	_, err = plain.RevokeKey(id, keyEntry("DELETE /v1/keys/{id}"))
	must(t, err)
	sentinels := []error{ledger.ErrInvalid, ledger.ErrUnknownOrg, ledger.ErrUnknownKey, ledger.ErrUnavailable}
	for _, tc := range []struct {
		name string
		op   func(l *ledger.Ledger) error
		want error
	}{
		{"id taken", func(l *ledger.Ledger) error {
			_, err := l.CreateKey(ledger.APIKey{ID: id, Name: "again", Role: "org_read", Org: "acme", Hash: h1}, keyEntry("POST /v1/keys"))
			return err
		}, ledger.ErrInvalid},
		{"unknown org", func(l *ledger.Ledger) error {
			_, err := l.CreateKey(ledger.APIKey{ID: "key_00000000000000aa", Name: "x", Role: "org_read", Org: "nope", Hash: h1}, keyEntry("POST /v1/keys"))
			return err
		}, ledger.ErrUnknownOrg},
		{"bad hash", func(l *ledger.Ledger) error {
			_, err := l.CreateKey(ledger.APIKey{ID: "key_00000000000000ab", Name: "x", Role: "org_read", Org: "acme", Hash: []byte("short")}, keyEntry("POST /v1/keys"))
			return err
		}, ledger.ErrInvalid},
		{"entry without key id", func(l *ledger.Ledger) error {
			_, err := l.CreateKey(ledger.APIKey{ID: "key_00000000000000ac", Name: "x", Role: "org_read", Org: "acme", Hash: h1}, ledger.AuditEntry{Role: "r", Action: "a"})
			return err
		}, ledger.ErrInvalid},
		{"rotate unknown", func(l *ledger.Ledger) error {
			_, err := l.RotateKey("key_00000000000000ff", h2, keyEntry("POST /v1/keys/{id}/rotate"))
			return err
		}, ledger.ErrUnknownKey},
		{"rotate odd id", func(l *ledger.Ledger) error {
			_, err := l.RotateKey("a/b", h2, keyEntry("POST /v1/keys/{id}/rotate"))
			return err
		}, ledger.ErrUnknownKey},
		{"rotate revoked", func(l *ledger.Ledger) error {
			_, err := l.RotateKey(id, h2, keyEntry("POST /v1/keys/{id}/rotate"))
			return err
		}, ledger.ErrInvalid},
		{"revoke unknown", func(l *ledger.Ledger) error {
			_, err := l.RevokeKey("key_00000000000000fe", keyEntry("DELETE /v1/keys/{id}"))
			return err
		}, ledger.ErrUnknownKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, entries := storeRevision(t, cli), len(keyEntries(t, n2.l))
			errPlain, errCluster := tc.op(plain), tc.op(n2.l)
			for _, err := range []error{errPlain, errCluster} {
				if !errors.Is(err, tc.want) {
					t.Fatalf("single node %v, cluster node %v: want %v from both", errPlain, errCluster, tc.want)
				}
			}
			for _, s := range sentinels {
				if errors.Is(errPlain, s) != errors.Is(errCluster, s) {
					t.Fatalf("single node %v, cluster node %v: they differ on %v", errPlain, errCluster, s)
				}
			}
			if got := storeRevision(t, cli); got != before {
				t.Fatalf("a refused key change moved etcd from %d to %d", before, got)
			}
			if got := len(keyEntries(t, n2.l)); got != entries {
				t.Fatalf("a refused key change left an audit entry (%d → %d)", entries, got)
			}
		})
	}

	// Each change's entry is on the node that made it, without the hash.
	for i, want := range []int{2, 1, 1} { // node 1: create, second revoke
		es := keyEntries(t, nodes[i].l)
		if len(es) != want {
			t.Fatalf("node %d has %d key audit entries, want %d: %+v", i+1, len(es), want, es)
		}
		for _, e := range es {
			b, _ := json.Marshal(e)
			for _, h := range [][]byte{h1, h2} {
				if strings.Contains(string(b), base64.StdEncoding.EncodeToString(h)) {
					t.Fatalf("node %d's audit entry holds a key's hash: %s", i+1, b)
				}
			}
			if e.Kind != ledger.AuditKey || e.Target != id || e.Org != "acme" {
				t.Fatalf("node %d's entry: %+v", i+1, e)
			}
		}
	}

	// Two nodes changing one key at once: each decides on what the other
	// wrote, so a rotate racing a revoke either comes first (and the
	// revoke follows) or is refused; every node ends with it revoked.
	for round := 0; round < 10; round++ {
		kid := fmt.Sprintf("key_%016x", 0x100+round)
		_, err := n1.l.CreateKey(ledger.APIKey{ID: kid, Name: "race", Role: "operator_read", Hash: h1}, keyEntry("POST /v1/keys"))
		must(t, err)
		must(t, n2.r.await(n1.r.Applied()))
		must(t, n3.r.await(n1.r.Applied()))
		var errRot, errRev error
		var wg sync.WaitGroup
		wg.Go(func() { _, errRot = n2.l.RotateKey(kid, h2, keyEntry("POST /v1/keys/{id}/rotate")) })
		wg.Go(func() { _, errRev = n3.l.RevokeKey(kid, keyEntry("DELETE /v1/keys/{id}")) })
		wg.Wait()
		must(t, errRev)
		if errRot != nil && !errors.Is(errRot, ledger.ErrInvalid) {
			t.Fatalf("round %d: the rotate racing a revoke got %v, want success or ErrInvalid (revoked)", round, errRot)
		}
		for _, rn := range nodes {
			must(t, rn.r.await(max(n2.r.Applied(), n3.r.Applied())))
			if k, ok := rn.l.Key(kid); !ok || !k.Revoked() {
				t.Fatalf("round %d: node %s holds %+v after the race", round, rn.n.ID(), k)
			}
		}
	}
	keysAgree(t, nodes)

	// A node down while keys change converges when it starts again.
	n3.stop()
	_, err = n1.l.CreateKey(ledger.APIKey{ID: "key_00000000000000bb", Name: "while away", Role: "support", Hash: h2}, keyEntry("POST /v1/keys"))
	must(t, err)
	n3.open(t)
	if k, ok := n3.l.Key("key_00000000000000bb"); !ok || !slices.Equal(k.Hash, h2) {
		t.Fatalf("node 3 restarted without the key made while it was down: %+v %v", k, ok)
	}
	keysAgree(t, nodes)

	// A fenced node's key change is refused and changes nothing.
	if _, err := cli.Revoke(ctx, n1.n.Lease()); err != nil {
		t.Fatal(err)
	}
	before, entries := storeRevision(t, cli), len(keyEntries(t, n1.l))
	_, err = n1.l.CreateKey(ledger.APIKey{ID: "key_00000000000000cc", Name: "fenced", Role: "support", Hash: h1}, keyEntry("POST /v1/keys"))
	if !errors.Is(err, ErrFenced) || !errors.Is(err, ledger.ErrUnavailable) {
		t.Fatalf("a fenced node's key create: %v, want ErrFenced as ledger.ErrUnavailable", err)
	}
	if got := storeRevision(t, cli); got != before || len(keyEntries(t, n1.l)) != entries {
		t.Fatalf("a fenced node's refused key create moved etcd (%d → %d) or left an entry", before, got)
	}
	if _, ok := n2.l.Key("key_00000000000000cc"); ok {
		t.Fatal("a fenced node's key reached node 2")
	}

	sort.Slice(lags, func(i, j int) bool { return lags[i] < lags[j] })
	t.Logf("key change returned on one node → applied on each other node (%d observations): p50 %s, max %s",
		len(lags), percentile(lags, 0.5), lags[len(lags)-1])
}
