package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/ledger"
)

// TestReplicaThreeNodes: a user, trunks, a toll-free number, org settings
// and a deck changed through node 1 are in the ledgers of nodes 2 and 3,
// and 200 more changes measure the lag from the write's return on node 1 to
// its application on nodes 2 and 3 (logged, not asserted). Against one
// etcd member (all three nodes on it) and three (each node on its own).
func TestReplicaThreeNodes(t *testing.T) {
	for _, members := range []int{1, 3} {
		t.Run(fmt.Sprintf("etcd%d", members), func(t *testing.T) {
			ec := etcdtest.Start(t, members)
			var nodes []*replicaNode
			for i := 0; i < 3; i++ {
				cli := memberClient(t, ec.Members[i%members])
				nodes = append(nodes, startReplica(t, cli, fmt.Sprintf("n%d", i+1), t.TempDir()))
			}
			r1 := nodes[0].r
			if _, err := r1.CreateOrg(ledger.Org{ID: "acme", Name: "Acme", Country: "US", Region: "us"}); err != nil {
				t.Fatal(err)
			}
			must(t, r1.PutTrunk(ledger.Trunk{ID: "pbx", Kind: "customer", Org: "acme", Addresses: []string{"127.0.0.1:5061"}, URI: "sip:127.0.0.1:5061"}))
			must(t, r1.PutTrunk(ledger.Trunk{ID: "carrier", Kind: "carrier", URI: "sip:127.0.0.1:5080", Prefixes: []string{""}}))
			must(t, r1.PutUser(ledger.User{Org: "acme", ID: "alice", Numbers: []string{"12125550100"}, Licenses: []string{"communications_credits"}}))
			must(t, r1.PutTollFree(ledger.TollFree{Number: "18005550100", Org: "acme", Trunk: "pbx"}))
			if _, err := r1.SetBlockPremium("acme", true); err != nil {
				t.Fatal(err)
			}
			if _, err := r1.SetFraudGuard("acme", ledger.FraudGuard{MaxCalls: 7, MaxSpendPerHour: dec("12.50")}); err != nil {
				t.Fatal(err)
			}
			deck := []byte("prefix,country,destination,type,rate_per_minute\n44,GB,United Kingdom,geographic,0.0100\n")
			must(t, r1.PutDeck(deck))
			target := r1.Applied()
			for i, rn := range nodes[1:] {
				must(t, rn.r.await(target))
				if u, ok := rn.l.User("acme", "alice"); !ok || u.Numbers[0] != "12125550100" {
					t.Fatalf("node %d: alice %+v %v", i+2, u, ok)
				}
				if o, err := rn.l.Org("acme"); err != nil || !o.BlockPremium || o.FraudGuard.MaxCalls != 7 {
					t.Fatalf("node %d: org %+v %v", i+2, o, err)
				}
				if tf, ok := rn.l.TollFreeOwner("18005550100"); !ok || tf.Trunk != "pbx" {
					t.Fatalf("node %d: toll-free %+v %v", i+2, tf, ok)
				}
				if !bytes.Equal(rn.l.Deck(), deck) {
					t.Fatalf("node %d: deck %q", i+2, rn.l.Deck())
				}
				for what, ch := range map[string]<-chan struct{}{"deck": rn.r.DeckChanged(), "trunks": rn.r.TrunksChanged()} {
					select {
					case <-ch:
					default:
						t.Fatalf("node %d: no %s signal", i+2, what)
					}
				}
			}

			// The lag: each change returns on node 1, then the clock runs
			// until nodes 2 and 3 have applied node 1's revision.
			const changes = 200
			var lags, ends []time.Duration
			for i := 0; i < changes; i++ {
				var err error
				began := time.Now()
				switch i % 4 {
				case 0, 1:
					err = r1.PutUser(ledger.User{Org: "acme", ID: fmt.Sprintf("u%d", i%20),
						Numbers: []string{fmt.Sprintf("1212556%04d", i)}, Licenses: []string{"communications_credits"}})
				case 2:
					_, err = r1.SetBlockPremium("acme", i%8 == 2)
				case 3:
					err = r1.PutTrunk(ledger.Trunk{ID: fmt.Sprintf("t%d", i%10), Kind: "customer", Org: "acme", MaxCalls: i})
				}
				must(t, err)
				target := r1.Applied()
				start := time.Now()
				must(t, nodes[1].r.await(target))
				must(t, nodes[2].r.await(target))
				lags = append(lags, time.Since(start))
				ends = append(ends, time.Since(began))
			}
			sort.Slice(lags, func(i, j int) bool { return lags[i] < lags[j] })
			sort.Slice(ends, func(i, j int) bool { return ends[i] < ends[j] })
			t.Logf("the same changes from the write's call on node 1 (its etcd commit and its own apply included) → applied on nodes 2 and 3: p50 %s, p99 %s, max %s",
				percentile(ends, 0.50), percentile(ends, 0.99), ends[len(ends)-1])
			t.Logf("replica lag over %d changes, etcd of %d member(s), write returned on node 1 → applied on nodes 2 and 3: p50 %s, p99 %s, max %s",
				changes, members, percentile(lags, 0.50), percentile(lags, 0.99), lags[len(lags)-1])
			want := configDump(t, nodes[0].l)
			for i, rn := range nodes[1:] {
				if got := configDump(t, rn.l); got != want {
					t.Fatalf("node %d holds another configuration than node 1:\n%s\nnode 1:\n%s", i+2, got, want)
				}
			}
		})
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// refusals are the ledger's sentinels a table row compares with errors.Is.
var refusals = []error{ledger.ErrInvalid, ledger.ErrUnknownOrg, ledger.ErrOrgExists, ledger.ErrNumberTaken,
	ledger.ErrInUse, ledger.ErrBelowMinimum, ledger.ErrRegionMismatch, ledger.ErrUnavailable, ledger.ErrCallEnded}

// TestReplicaRefusalsMatchLedger gives a Replica and a plain Ledger the
// same admin operations, bad input included: each answers the same (same
// sentinel error, same found flag, same org), and after each, both ledgers
// hold the same configuration. A refused operation leaves etcd's revision
// where it was.
func TestReplicaRefusalsMatchLedger(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	cli := ec.Client()
	defer cli.Close()
	plain := openReplicaLedger(t, t.TempDir())
	defer plain.Close()
	rn := startReplica(t, cli, "n1", t.TempDir())
	books := map[string]SharedConfig{"ledger": plain, "replica": rn.r}

	// A free call of alice's and an inbound one to the toll-free number,
	// opened on each side's own ledger as its gateway would, make the
	// deletes that refuse calls up refuse.
	openCalls := func(t *testing.T) {
		for _, l := range []*ledger.Ledger{plain, rn.l} {
			if _, err := l.OpenCall(ledger.Call{ID: "c-alice", Details: ledger.Details{Org: "acme", User: "alice"}, Free: true}, testT0); err != nil {
				t.Fatal(err)
			}
			if _, err := l.OpenCall(ledger.Call{ID: "c-tf", Details: ledger.Details{Org: "acme", Direction: ledger.DirectionInbound, To: "18005550100"}, Free: true}, testT0); err != nil {
				t.Fatal(err)
			}
		}
	}
	closeCalls := func(t *testing.T) {
		for _, l := range []*ledger.Ledger{plain, rn.l} {
			for _, id := range []string{"c-alice", "c-tf"} {
				if _, err := l.CloseCall(id, ledger.CallEnd{At: testT0, Reason: ledger.ReasonCallerHangup}); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	many := make([]string, ledger.MaxNumbersPerUser+1)
	for i := range many {
		many[i] = fmt.Sprintf("1646555%04d", i)
	}
	recharge := ledger.AutoRecharge{Enabled: true, Threshold: dec("10"), Amount: dec("50"), PaymentMethod: "pm_card", Customer: "cus_1"}
	type result struct {
		err   error
		found bool
		org   ledger.Org
		ar    ledger.AutoRecharge
	}
	cases := []struct {
		name   string
		before func(t *testing.T)
		op     func(b SharedConfig) result
		want   error // nil: accepted
	}{
		{name: "create org bad id", want: ledger.ErrInvalid, op: func(b SharedConfig) result {
			o, err := b.CreateOrg(ledger.Org{ID: "bad id!", Country: "US"})
			return result{err: err, org: o}
		}},
		{name: "create org bad currency", want: ledger.ErrInvalid, op: func(b SharedConfig) result {
			o, err := b.CreateOrg(ledger.Org{ID: "x", Currency: "usd"})
			return result{err: err, org: o}
		}},
		{name: "create org bad timezone", want: ledger.ErrInvalid, op: func(b SharedConfig) result {
			o, err := b.CreateOrg(ledger.Org{ID: "x", Timezone: "Mars/Olympus"})
			return result{err: err, org: o}
		}},
		{name: "create acme", op: func(b SharedConfig) result {
			o, err := b.CreateOrg(ledger.Org{ID: "acme", Name: "Acme", Country: "US", Region: "us", Timezone: "America/New_York"})
			return result{err: err, org: o}
		}},
		{name: "create acme again", want: ledger.ErrOrgExists, op: func(b SharedConfig) result {
			o, err := b.CreateOrg(ledger.Org{ID: "acme", Country: "GB"})
			return result{err: err, org: o}
		}},
		{name: "create beta", op: func(b SharedConfig) result {
			o, err := b.CreateOrg(ledger.Org{ID: "beta", Country: "GB", Region: "eu"})
			return result{err: err, org: o}
		}},
		{name: "create eu1 billing elsewhere", op: func(b SharedConfig) result {
			o, err := b.CreateOrg(ledger.Org{ID: "eu1", Country: "DE", Region: "eu", BillingRegion: "us"})
			return result{err: err, org: o}
		}},
		{name: "user of unknown org", want: ledger.ErrUnknownOrg, op: func(b SharedConfig) result {
			return result{err: b.PutUser(ledger.User{Org: "nope", ID: "alice"})}
		}},
		{name: "user bad id", want: ledger.ErrInvalid, op: func(b SharedConfig) result {
			return result{err: b.PutUser(ledger.User{Org: "acme", ID: "a/b"})}
		}},
		{name: "user too many numbers", want: ledger.ErrInvalid, op: func(b SharedConfig) result {
			return result{err: b.PutUser(ledger.User{Org: "acme", ID: "alice", Numbers: many})}
		}},
		{name: "alice", op: func(b SharedConfig) result {
			return result{err: b.PutUser(ledger.User{Org: "acme", ID: "alice", Numbers: []string{"12125550101", "12125550100", "12125550100"},
				Licenses: []string{"international_calling_plan", "communications_credits"}})}
		}},
		{name: "alice again (idempotent)", op: func(b SharedConfig) result {
			return result{err: b.PutUser(ledger.User{Org: "acme", ID: "alice", Numbers: []string{"12125550100", "12125550101"},
				Licenses: []string{"communications_credits", "international_calling_plan"}})}
		}},
		{name: "bob takes alice's number", want: ledger.ErrNumberTaken, op: func(b SharedConfig) result {
			return result{err: b.PutUser(ledger.User{Org: "beta", ID: "bob", Numbers: []string{"447700900001", "12125550101"}})}
		}},
		{name: "toll-free bad number", want: ledger.ErrInvalid, op: func(b SharedConfig) result {
			return result{err: b.PutTollFree(ledger.TollFree{Number: "1800abc", Org: "acme"})}
		}},
		{name: "toll-free unknown org", want: ledger.ErrUnknownOrg, op: func(b SharedConfig) result {
			return result{err: b.PutTollFree(ledger.TollFree{Number: "18005550100", Org: "nope"})}
		}},
		{name: "toll-free acme", op: func(b SharedConfig) result {
			return result{err: b.PutTollFree(ledger.TollFree{Number: "18005550100", Org: "acme"})}
		}},
		{name: "toll-free of another org", want: ledger.ErrNumberTaken, op: func(b SharedConfig) result {
			return result{err: b.PutTollFree(ledger.TollFree{Number: "18005550100", Org: "beta"})}
		}},
		{name: "toll-free that is alice's", want: ledger.ErrNumberTaken, op: func(b SharedConfig) result {
			return result{err: b.PutTollFree(ledger.TollFree{Number: "12125550100", Org: "acme"})}
		}},
		{name: "bob takes a toll-free number", want: ledger.ErrNumberTaken, op: func(b SharedConfig) result {
			return result{err: b.PutUser(ledger.User{Org: "beta", ID: "bob", Numbers: []string{"18005550100"}})}
		}},
		{name: "trunk bad id", want: ledger.ErrInvalid, op: func(b SharedConfig) result {
			return result{err: b.PutTrunk(ledger.Trunk{ID: "", Kind: "carrier"})}
		}},
		{name: "trunk of unknown org", want: ledger.ErrUnknownOrg, op: func(b SharedConfig) result {
			return result{err: b.PutTrunk(ledger.Trunk{ID: "pbx", Kind: "customer", Org: "nope"})}
		}},
		{name: "trunk pbx", op: func(b SharedConfig) result {
			return result{err: b.PutTrunk(ledger.Trunk{ID: "pbx", Kind: "customer", Org: "acme", URI: "sip:10.0.0.1"})}
		}},
		{name: "trunk pbx-beta", op: func(b SharedConfig) result {
			return result{err: b.PutTrunk(ledger.Trunk{ID: "pbx-beta", Kind: "customer", Org: "beta", URI: "sip:10.0.0.2"})}
		}},
		{name: "toll-free on another org's trunk", want: ledger.ErrInvalid, op: func(b SharedConfig) result {
			return result{err: b.PutTollFree(ledger.TollFree{Number: "18005550100", Org: "acme", Trunk: "pbx-beta"})}
		}},
		{name: "toll-free on a missing trunk", want: ledger.ErrInvalid, op: func(b SharedConfig) result {
			return result{err: b.PutTollFree(ledger.TollFree{Number: "18005550100", Org: "acme", Trunk: "gone"})}
		}},
		{name: "toll-free delivered by pbx", op: func(b SharedConfig) result {
			return result{err: b.PutTollFree(ledger.TollFree{Number: "18005550100", Org: "acme", Trunk: "pbx"})}
		}},
		{name: "delete trunk delivering", want: ledger.ErrInUse, op: func(b SharedConfig) result {
			found, err := b.DeleteTrunk("pbx")
			return result{err: err, found: found}
		}},
		{name: "delete missing trunk", op: func(b SharedConfig) result {
			found, err := b.DeleteTrunk("nope")
			return result{err: err, found: found}
		}},
		{name: "fraud guard negative", want: ledger.ErrInvalid, op: func(b SharedConfig) result {
			o, err := b.SetFraudGuard("acme", ledger.FraudGuard{MaxCalls: -1})
			return result{err: err, org: o}
		}},
		{name: "fraud guard unknown org", want: ledger.ErrUnknownOrg, op: func(b SharedConfig) result {
			o, err := b.SetFraudGuard("nope", ledger.FraudGuard{MaxCalls: 3})
			return result{err: err, org: o}
		}},
		{name: "fraud guard", op: func(b SharedConfig) result {
			o, err := b.SetFraudGuard("acme", ledger.FraudGuard{MaxCalls: 3, MaxChargePerCall: dec("2.5")})
			return result{err: err, org: o}
		}},
		{name: "contacts bad email", want: ledger.ErrInvalid, op: func(b SharedConfig) result {
			o, err := b.SetContacts("acme", ledger.Contacts{Emails: []string{"not an address"}})
			return result{err: err, org: o}
		}},
		{name: "contacts", op: func(b SharedConfig) result {
			o, err := b.SetContacts("acme", ledger.Contacts{Emails: []string{"billing@example.com"}})
			return result{err: err, org: o}
		}},
		{name: "block premium unknown org", want: ledger.ErrUnknownOrg, op: func(b SharedConfig) result {
			o, err := b.SetBlockPremium("nope", true)
			return result{err: err, org: o}
		}},
		{name: "block premium", op: func(b SharedConfig) result {
			o, err := b.SetBlockPremium("acme", true)
			return result{err: err, org: o}
		}},
		{name: "block premium again", op: func(b SharedConfig) result {
			o, err := b.SetBlockPremium("acme", true)
			return result{err: err, org: o}
		}},
		{name: "auto-recharge below minimum", want: ledger.ErrBelowMinimum, op: func(b SharedConfig) result {
			ar := recharge
			ar.Amount = dec("49.99")
			got, err := b.SetAutoRecharge("acme", ar)
			return result{err: err, ar: got}
		}},
		{name: "auto-recharge bad payment method", want: ledger.ErrInvalid, op: func(b SharedConfig) result {
			ar := recharge
			ar.PaymentMethod = "visa"
			got, err := b.SetAutoRecharge("acme", ar)
			return result{err: err, ar: got}
		}},
		{name: "auto-recharge unknown org", want: ledger.ErrUnknownOrg, op: func(b SharedConfig) result {
			got, err := b.SetAutoRecharge("nope", recharge)
			return result{err: err, ar: got}
		}},
		{name: "auto-recharge more precision than the currency", want: ledger.ErrInvalid, op: func(b SharedConfig) result {
			ar := recharge
			ar.Amount = dec("50.001")
			got, err := b.SetAutoRecharge("acme", ar)
			return result{err: err, ar: got}
		}},
		{name: "auto-recharge across regions", want: ledger.ErrRegionMismatch, op: func(b SharedConfig) result {
			got, err := b.SetAutoRecharge("eu1", recharge)
			return result{err: err, ar: got}
		}},
		{name: "auto-recharge across regions with an incident", op: func(b SharedConfig) result {
			ar := recharge
			ar.Incident = "INC-7"
			got, err := b.SetAutoRecharge("eu1", ar)
			return result{err: err, ar: got}
		}},
		{name: "auto-recharge off", op: func(b SharedConfig) result {
			got, err := b.SetAutoRecharge("acme", ledger.AutoRecharge{})
			return result{err: err, ar: got}
		}},
		{name: "delete user of unknown org", want: ledger.ErrUnknownOrg, op: func(b SharedConfig) result {
			found, err := b.DeleteUser("nope", "alice")
			return result{err: err, found: found}
		}},
		{name: "delete missing user", op: func(b SharedConfig) result {
			found, err := b.DeleteUser("acme", "nobody")
			return result{err: err, found: found}
		}},
		{name: "delete alice with a call up", before: openCalls, want: ledger.ErrInUse, op: func(b SharedConfig) result {
			found, err := b.DeleteUser("acme", "alice")
			return result{err: err, found: found}
		}},
		{name: "delete toll-free with a call up", want: ledger.ErrInUse, op: func(b SharedConfig) result {
			found, err := b.DeleteTollFree("acme", "18005550100")
			return result{err: err, found: found}
		}},
		{name: "delete alice", before: closeCalls, op: func(b SharedConfig) result {
			found, err := b.DeleteUser("acme", "alice")
			return result{err: err, found: found}
		}},
		{name: "delete alice again", op: func(b SharedConfig) result {
			found, err := b.DeleteUser("acme", "alice")
			return result{err: err, found: found}
		}},
		{name: "bob takes alice's old number", op: func(b SharedConfig) result {
			return result{err: b.PutUser(ledger.User{Org: "beta", ID: "bob", Numbers: []string{"12125550101"}, Licenses: []string{"domestic_calling_plan"}})}
		}},
		{name: "delete toll-free of another org", op: func(b SharedConfig) result {
			found, err := b.DeleteTollFree("beta", "18005550100")
			return result{err: err, found: found}
		}},
		{name: "delete toll-free", op: func(b SharedConfig) result {
			found, err := b.DeleteTollFree("acme", "18005550100")
			return result{err: err, found: found}
		}},
		{name: "delete trunk no longer delivering", op: func(b SharedConfig) result {
			found, err := b.DeleteTrunk("pbx")
			return result{err: err, found: found}
		}},
		{name: "deck", op: func(b SharedConfig) result {
			return result{err: b.PutDeck([]byte("prefix,country,destination,type,rate_per_minute\n1,US,United States,geographic,0.0100\n"))}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.before != nil {
				tc.before(t)
			}
			revBefore := storeRevision(t, cli)
			got := map[string]result{}
			for _, side := range []string{"ledger", "replica"} {
				got[side] = tc.op(books[side])
				err := got[side].err
				if (tc.want == nil) != (err == nil) || (tc.want != nil && !errors.Is(err, tc.want)) {
					t.Fatalf("%s: %v, want %v", side, err, tc.want)
				}
				for _, s := range refusals {
					if errors.Is(err, s) != errors.Is(got["ledger"].err, s) {
						t.Fatalf("%s answered %v, the ledger %v", side, err, got["ledger"].err)
					}
				}
			}
			l, r := got["ledger"], got["replica"]
			if l.found != r.found {
				t.Fatalf("found: ledger %v, replica %v", l.found, r.found)
			}
			l.org.Balances, r.org.Balances = ledger.Balances{}, ledger.Balances{}
			if fmt.Sprint(l.org) != fmt.Sprint(r.org) || fmt.Sprint(l.ar) != fmt.Sprint(r.ar) {
				t.Fatalf("answers differ:\nledger  %+v %+v\nreplica %+v %+v", l.org, l.ar, r.org, r.ar)
			}
			if tc.want != nil {
				if rev := storeRevision(t, cli); rev != revBefore {
					t.Fatalf("refused, yet etcd moved from revision %d to %d", revBefore, rev)
				}
			}
			if a, b := configDump(t, plain), configDump(t, rn.l); a != b {
				t.Fatalf("configurations differ:\nledger  %s\nreplica %s", a, b)
			}
		})
	}
	for _, l := range []*ledger.Ledger{plain, rn.l} {
		must(t, l.CheckInvariants())
	}
}

// TestReplicaRestartConverges: node 2's replica and ledger stop; node 1
// adds, changes and deletes meanwhile; node 2 reopened on its old Pebble
// directory holds node 1's configuration, deletions included.
func TestReplicaRestartConverges(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	cli := ec.Client()
	defer cli.Close()
	a := startReplica(t, cli, "a", t.TempDir())
	b := startReplica(t, cli, "b", t.TempDir())
	r := a.r
	if _, err := r.CreateOrg(ledger.Org{ID: "acme", Country: "US"}); err != nil {
		t.Fatal(err)
	}
	must(t, r.PutTrunk(ledger.Trunk{ID: "pbx", Kind: "customer", Org: "acme"}))
	must(t, r.PutTrunk(ledger.Trunk{ID: "old", Kind: "carrier"}))
	must(t, r.PutUser(ledger.User{Org: "acme", ID: "alice", Numbers: []string{"12125550100"}, Licenses: []string{"international_calling_plan"}}))
	must(t, r.PutUser(ledger.User{Org: "acme", ID: "carol", Numbers: []string{"12125550199"}}))
	must(t, r.PutTollFree(ledger.TollFree{Number: "18005550100", Org: "acme", Trunk: "pbx"}))
	must(t, r.PutDeck([]byte("prefix,country,destination,type,rate_per_minute\n1,US,US,geographic,0.01\n")))
	must(t, b.r.await(r.Applied()))
	if got, want := configDump(t, b.l), configDump(t, a.l); got != want {
		t.Fatalf("before the restart:\n%s\nwant\n%s", got, want)
	}
	pools, err := b.l.Pools("acme", testT0)
	must(t, err)

	b.stop()
	// alice gives her number up and bob takes it: on b's resync, bob's
	// record must win the number over alice's stale one.
	must(t, r.PutUser(ledger.User{Org: "acme", ID: "alice", Numbers: []string{"12125550111"}, Licenses: []string{"international_calling_plan"}}))
	must(t, r.PutUser(ledger.User{Org: "acme", ID: "bob", Numbers: []string{"12125550100"}, Licenses: []string{"international_calling_plan"}}))
	if _, err := r.DeleteUser("acme", "carol"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.DeleteTollFree("acme", "18005550100"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.DeleteTrunk("old"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.SetBlockPremium("acme", true); err != nil {
		t.Fatal(err)
	}
	must(t, r.PutDeck([]byte("prefix,country,destination,type,rate_per_minute\n44,GB,UK,geographic,0.02\n")))

	b.open(t)
	if got, want := configDump(t, b.l), configDump(t, a.l); got != want {
		t.Fatalf("after the restart node b holds\n%s\nwant\n%s", got, want)
	}
	if _, ok := b.l.User("acme", "carol"); ok {
		t.Fatal("carol, deleted while b was down, is still on b")
	}
	after, err := b.l.Pools("acme", testT0)
	must(t, err)
	t.Logf("b's pools before %+v, after %+v", pools, after)
	must(t, b.l.CheckInvariants())
}

// TestReplicaRaces: two nodes racing to create one org, or to give one
// number to different users: exactly one wins each round, and both ledgers
// end up agreeing with etcd on who.
func TestReplicaRaces(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	a := startReplica(t, memberClient(t, ec.Members[0]), "a", t.TempDir())
	b := startReplica(t, memberClient(t, ec.Members[0]), "b", t.TempDir())
	const rounds = 25
	race := func(fa, fb func() error) (errA, errB error) {
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); errA = fa() }()
		go func() { defer wg.Done(); errB = fb() }()
		wg.Wait()
		return errA, errB
	}
	for i := 0; i < rounds; i++ {
		id := fmt.Sprintf("race%d", i)
		create := func(r *Replica, name string) func() error {
			return func() error { _, err := r.CreateOrg(ledger.Org{ID: id, Name: name, Country: "US"}); return err }
		}
		errA, errB := race(create(a.r, "by a"), create(b.r, "by b"))
		if (errA == nil) == (errB == nil) {
			t.Fatalf("round %d create: a %v, b %v: want exactly one winner", i, errA, errB)
		}
		for _, err := range []error{errA, errB} {
			if err != nil && !errors.Is(err, ledger.ErrOrgExists) {
				t.Fatalf("round %d create: loser got %v, want ErrOrgExists", i, err)
			}
		}
		winner := "by a"
		if errA != nil {
			winner = "by b"
		}
		must(t, b.r.await(a.r.Applied()))
		must(t, a.r.await(b.r.Applied()))
		for _, rn := range []*replicaNode{a, b} {
			if o, err := rn.l.Org(id); err != nil || o.Name != winner {
				t.Fatalf("round %d: node %s has org %+v %v, want the one %s", i, rn.n.ID(), o, err, winner)
			}
		}
	}
	numbers := 0
	for i := 0; i < rounds; i++ {
		n := fmt.Sprintf("1415555%04d", i)
		put := func(r *Replica, user string) func() error {
			return func() error { return r.PutUser(ledger.User{Org: "race0", ID: user, Numbers: []string{n}}) }
		}
		errA, errB := race(put(a.r, fmt.Sprintf("ua%d", i)), put(b.r, fmt.Sprintf("ub%d", i)))
		if (errA == nil) == (errB == nil) {
			t.Fatalf("round %d number: a %v, b %v: want exactly one winner", i, errA, errB)
		}
		for _, err := range []error{errA, errB} {
			if err != nil && !errors.Is(err, ledger.ErrNumberTaken) {
				t.Fatalf("round %d number: loser got %v, want ErrNumberTaken", i, err)
			}
		}
		must(t, b.r.await(a.r.Applied()))
		must(t, a.r.await(b.r.Applied()))
		want := fmt.Sprintf("ua%d", i)
		if errA != nil {
			want = fmt.Sprintf("ub%d", i)
		}
		for _, rn := range []*replicaNode{a, b} {
			if u, ok := rn.l.UserByNumber(n); !ok || u.ID != want {
				t.Fatalf("round %d: node %s gives +%s to %+v, want %s", i, rn.n.ID(), n, u, want)
			}
		}
		numbers++
	}
	if got, want := configDump(t, b.l), configDump(t, a.l); got != want {
		t.Fatalf("the nodes disagree:\n%s\n%s", got, want)
	}
	t.Logf("%d create races and %d number races, one winner each", rounds, numbers)
}

// TestReplicaFenced: once a node's lease is revoked, its config writes are
// refused (ErrFenced, wrapped as ledger.ErrUnavailable) and change nothing
// in etcd or on the other node.
func TestReplicaFenced(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	cli := ec.Client()
	defer cli.Close()
	a := startReplica(t, cli, "a", t.TempDir())
	b := startReplica(t, cli, "b", t.TempDir())
	if _, err := a.r.CreateOrg(ledger.Org{ID: "acme", Country: "US"}); err != nil {
		t.Fatal(err)
	}
	must(t, b.r.await(a.r.Applied()))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Revoke(ctx, a.n.Lease()); err != nil {
		t.Fatal(err)
	}
	before, dumpB := storeRevision(t, cli), configDump(t, b.l)
	ops := map[string]func() error{
		"create org": func() error { _, err := a.r.CreateOrg(ledger.Org{ID: "beta", Country: "US"}); return err },
		"block premium": func() error {
			_, err := a.r.SetBlockPremium("acme", true)
			return err
		},
		"user": func() error {
			return a.r.PutUser(ledger.User{Org: "acme", ID: "alice", Numbers: []string{"12125550100"}})
		},
		"trunk": func() error { return a.r.PutTrunk(ledger.Trunk{ID: "pbx", Kind: "customer", Org: "acme"}) },
		"deck":  func() error { return a.r.PutDeck(bytes.Repeat([]byte("x"), 3*deckChunkBytes/2)) },
	}
	for name, op := range ops {
		err := op()
		if !errors.Is(err, ErrFenced) || !errors.Is(err, ledger.ErrUnavailable) {
			t.Fatalf("%s on a fenced node: %v, want ErrFenced wrapped as ledger.ErrUnavailable", name, err)
		}
	}
	if rev := storeRevision(t, cli); rev != before {
		t.Fatalf("a fenced node moved etcd from revision %d to %d", before, rev)
	}
	if got := configDump(t, b.l); got != dumpB {
		t.Fatalf("a fenced node changed node b's configuration:\n%s\n%s", got, dumpB)
	}
	if _, ok := a.l.User("acme", "alice"); ok {
		t.Fatal("a fenced node's refused user is in its own ledger")
	}
}

// TestReplicaBigDeck: a deck over 2 MiB goes through etcd in chunks and
// arrives byte for byte; replacing it deletes the old chunks.
func TestReplicaBigDeck(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	cli := ec.Client()
	defer cli.Close()
	a := startReplica(t, cli, "a", t.TempDir())
	b := startReplica(t, cli, "b", t.TempDir())
	deck := func(rate string, rows int) []byte {
		var buf bytes.Buffer
		buf.WriteString("prefix,country,destination,type,rate_per_minute\n")
		for i := 0; buf.Len() < rows; i++ {
			fmt.Fprintf(&buf, "1%09d,US,United States,geographic,%s\n", i, rate)
		}
		return buf.Bytes()
	}
	first := deck("0.0100", 5<<19) // 2.5 MiB
	start := time.Now()
	must(t, a.r.PutDeck(first))
	wrote := time.Since(start)
	must(t, b.r.await(a.r.Applied()))
	applied := time.Since(start)
	if !bytes.Equal(b.l.Deck(), first) {
		t.Fatalf("node b's deck: %d bytes, want %d", len(b.l.Deck()), len(first))
	}
	chunkIDs := func() []string {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := cli.Get(ctx, testPrefix+"deck/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, kv := range resp.Kvs {
			out = append(out, strings.TrimPrefix(string(kv.Key), testPrefix+"deck/"))
		}
		return out
	}
	firstChunks := chunkIDs()
	if len(firstChunks) != 3 {
		t.Fatalf("a 2.5 MiB deck in %d chunks (%v), want 3 of 1 MiB", len(firstChunks), firstChunks)
	}
	second := deck("0.0200", 3<<20)
	must(t, b.r.PutDeck(second))
	must(t, a.r.await(b.r.Applied()))
	if !bytes.Equal(a.l.Deck(), second) || !bytes.Equal(b.l.Deck(), second) {
		t.Fatal("the second deck did not replace the first on both nodes")
	}
	for _, c := range chunkIDs() {
		if strings.HasPrefix(c, strings.Split(firstChunks[0], "/")[0]+"/") {
			t.Fatalf("the first deck's chunk %s is still in etcd", c)
		}
	}
	t.Logf("a %.1f MiB deck: written in %s, applied on the other node %s after the write started", float64(len(first))/(1<<20), wrote, applied)
	if err := a.r.PutDeck(make([]byte, MaxDeckBytes+1)); !errors.Is(err, ledger.ErrInvalid) {
		t.Fatalf("a deck over %d bytes: %v, want ErrInvalid", MaxDeckBytes, err)
	}
	// The reopened node compares digests and keeps its deck without a fetch.
	b.stop()
	b.open(t)
	if !bytes.Equal(b.l.Deck(), second) {
		t.Fatal("node b lost its deck across a restart")
	}
}

// TestReplicaResyncAfterCompaction: a watcher that starts from a revision
// etcd has compacted away (a node that fell that far behind) gets the
// compaction from its watch, resyncs in full and converges — deletions
// included — then goes on applying from the resync's revision.
func TestReplicaResyncAfterCompaction(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	cli := ec.Client()
	defer cli.Close()
	a := startReplica(t, cli, "a", t.TempDir())
	r := a.r
	if _, err := r.CreateOrg(ledger.Org{ID: "acme", Country: "US"}); err != nil {
		t.Fatal(err)
	}
	must(t, r.PutUser(ledger.User{Org: "acme", ID: "alice", Numbers: []string{"12125550100"}}))
	must(t, r.PutTrunk(ledger.Trunk{ID: "pbx", Kind: "customer", Org: "acme"}))

	// Node b's ledger holds the configuration as of stale; it is down.
	b := startReplica(t, cli, "b", t.TempDir())
	stale := b.r.Applied()
	b.r.Close()
	b.r = nil

	if _, err := r.DeleteUser("acme", "alice"); err != nil {
		t.Fatal(err)
	}
	must(t, r.PutUser(ledger.User{Org: "acme", ID: "bob", Numbers: []string{"12125550100"}}))
	if _, err := r.DeleteTrunk("pbx"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.SetBlockPremium("acme", true); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Compact(ctx, storeRevision(t, cli)); err != nil {
		t.Fatal(err)
	}

	// Its watcher starts from stale+1, which etcd no longer has.
	rb := newReplica(b.n, b.l, quietLog())
	rb.start(stale)
	b.r = rb
	deadline := time.Now().Add(10 * time.Second)
	for rb.Resyncs() == 0 || rb.Applied() < r.Applied() {
		if time.Now().After(deadline) {
			t.Fatalf("no resync after the compaction: resyncs %d, applied %d, node a at %d", rb.Resyncs(), rb.Applied(), r.Applied())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got, want := configDump(t, b.l), configDump(t, a.l); got != want {
		t.Fatalf("after the resync node b holds\n%s\nwant\n%s", got, want)
	}
	// And it watches again from there.
	must(t, r.PutTrunk(ledger.Trunk{ID: "carrier", Kind: "carrier"}))
	must(t, rb.await(r.Applied()))
	if got, want := configDump(t, b.l), configDump(t, a.l); got != want {
		t.Fatalf("after the resync, a later change: node b holds\n%s\nwant\n%s", got, want)
	}
	t.Logf("resyncs after the compaction: %d", rb.Resyncs())
}

// TestReplicaSeed: a single-node ledger's configuration cannot be wiped by
// starting a replica on an empty etcd (ErrUnseeded); Seed copies it into
// etcd (once: a second seed is ErrConfigExists), after which the node's
// replica starts without changing it and a new node's empty ledger gets
// the same configuration.
func TestReplicaSeed(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	cli := ec.Client()
	defer cli.Close()
	dir := t.TempDir()
	l := openReplicaLedger(t, dir)
	if _, err := l.CreateOrg(ledger.Org{ID: "acme", Country: "US", Region: "us"}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Fund("acme", dec("100"), "first"); err != nil {
		t.Fatal(err)
	}
	must(t, l.PutTrunk(ledger.Trunk{ID: "pbx", Kind: "customer", Org: "acme"}))
	for i := 0; i < 60; i++ { // more operations than one transaction takes
		must(t, l.PutUser(ledger.User{Org: "acme", ID: fmt.Sprintf("u%02d", i), Numbers: []string{fmt.Sprintf("1212555%04d", i), fmt.Sprintf("1646555%04d", i)}}))
	}
	must(t, l.PutTollFree(ledger.TollFree{Number: "18005550100", Org: "acme", Trunk: "pbx"}))
	must(t, l.PutDeck(bytes.Repeat([]byte("1,US,US,geographic,0.01\n"), 60_000)))
	want := configDump(t, l)

	a := join(t, cli, "a")
	if _, err := NewReplica(context.Background(), a, l, quietLog()); !errors.Is(err, ErrUnseeded) {
		t.Fatalf("replica on an empty etcd over a ledger with a configuration: %v, want ErrUnseeded", err)
	}
	if got := configDump(t, l); got != want {
		t.Fatal("the refused replica changed the ledger")
	}
	n, err := Seed(context.Background(), a, l)
	must(t, err)
	if _, err := Seed(context.Background(), a, l); !errors.Is(err, ErrConfigExists) {
		t.Fatalf("second seed: %v, want ErrConfigExists", err)
	}
	checkShared(t, cli)
	rn := &replicaNode{n: a, l: l, dir: dir}
	rn.r, err = NewReplica(context.Background(), a, l, quietLog())
	must(t, err)
	t.Cleanup(rn.stop)
	if got := configDump(t, l); got != want {
		t.Fatalf("the seeding node's configuration changed:\n%s\nwant\n%s", got, want)
	}
	if o, _ := l.Org("acme"); !o.Balance.Equal(dec("100")) {
		t.Fatalf("the seeding node's money moved: %+v", o.Balances)
	}
	b := startReplica(t, cli, "b", t.TempDir())
	if got := configDump(t, b.l); got != want {
		t.Fatalf("a new node holds\n%s\nwant\n%s", got, want)
	}
	if o, _ := b.l.Org("acme"); !o.Balance.IsZero() {
		t.Fatalf("money came through the seed: %+v", o.Balances)
	}
	t.Logf("seeded %d records", n)
}
