package cluster

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/ledger"
)

// TestFundingsListedOnceInOrder: on a real etcd, fundings with awkward
// keys ('/', '%', one too long for a key segment), an auto-recharge and a
// one-time purchase paid through the payer's funding key, and spending in
// between. Paging Fundings with every limit from 1 to 4 gives each
// funding exactly once, in the order etcd took them, with its kind, the
// key as given (a purchase: its id), its time, incident and the cluster
// balance right after it; another org's fundings never show.
func TestFundingsListedOnceInOrder(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	n := join(t, ec.Client(), "n1")
	ctx := context.Background()
	long := strings.Repeat("x/", 80)
	type want struct{ kind, key, amount, balance, incident string }
	var wants []want
	fund := func(key, given, amount, incident string) {
		t.Helper()
		if _, err := n.fund(ctx, "acme", dec(amount), key, given, incident); err != nil {
			t.Fatal(err)
		}
	}
	purchase := func(id, kind, amount string) {
		t.Helper()
		rec := purchaseRecord{Purchase: ledger.Purchase{ID: id, Kind: kind, Org: "acme", Amount: dec(amount),
			State: ledger.PurchaseSucceeded, Incident: "INC-" + id}}
		if _, err := ec.Client().Put(ctx, n.k.purchase("acme", id), string(encode(rec))); err != nil {
			t.Fatal(err)
		}
		if err := n.Fund(ctx, "acme", dec(amount), purchaseFunding(id)); err != nil {
			t.Fatal(err)
		}
	}
	started := time.Now().UTC()
	fund(fundingKey("k1"), "k1", "100.00", "")
	wants = append(wants, want{ledger.EntryFunding, "k1", "100", "100", ""})
	fund(fundingKey("a/b%c"), "a/b%c", "20.00", "INC-7")
	wants = append(wants, want{ledger.EntryFunding, "a/b%c", "20", "120", "INC-7"})
	if err := n.Debit(ctx, "acme", dec("30.00")); err != nil {
		t.Fatal(err)
	}
	purchase("acme-r1", ledger.PurchaseAutoRecharge, "50.00")
	wants = append(wants, want{ledger.EntryRecharge, "acme-r1", "50", "140", "INC-acme-r1"})
	fund(fundingKey(long), long, "5.00", "")
	wants = append(wants, want{ledger.EntryFunding, long, "5", "145", ""})
	purchase("acme-o2", ledger.PurchaseOneTime, "60.00")
	wants = append(wants, want{ledger.EntryPurchase, "acme-o2", "60", "205", "INC-acme-o2"})
	if err := n.Fund(ctx, "other", dec("1.00"), "k1"); err != nil {
		t.Fatal(err)
	}
	mustCheck(t, n)
	// A record as written before time, balance and key were kept (put
	// by hand: funded no longer adds up, which Fundings does not read).
	if _, err := ec.Client().Put(ctx, n.k.funding("acme", fundingKey("old%key")), `{"amount":"1","node":"n0","epoch":1}`); err != nil {
		t.Fatal(err)
	}
	wants = append(wants, want{ledger.EntryFunding, "old%key", "1", "0", ""})

	for limit := 1; limit <= 4; limit++ {
		var got []ledger.Entry
		after, pages := uint64(0), 0
		for ; ; pages++ {
			es, next, err := n.Fundings(ctx, "acme", after, limit)
			if err != nil {
				t.Fatal(err)
			}
			if len(es) > limit || pages > 10 {
				t.Fatalf("limit %d: a page of %d, page %d", limit, len(es), pages)
			}
			got = append(got, es...)
			if next == 0 {
				break
			}
			if next != es[len(es)-1].Seq {
				t.Fatalf("limit %d: next %d, last seq %d", limit, next, es[len(es)-1].Seq)
			}
			after = next
		}
		if len(got) != len(wants) {
			t.Fatalf("limit %d: %d fundings over %d pages, want %d: %+v", limit, len(got), pages+1, len(wants), got)
		}
		for i, e := range got {
			w := wants[i]
			if e.Kind != w.kind || e.Key != w.key || !e.Amount.Equal(dec(w.amount)) || !e.Balance.Equal(dec(w.balance)) || e.Incident != w.incident ||
				(i > 0 && e.Seq <= got[i-1].Seq) {
				t.Fatalf("limit %d: funding %d is %+v, want %+v", limit, i, e, w)
			}
			if stamped := w.key != "old%key"; stamped == e.At.IsZero() || (stamped && (e.At.Before(started) || e.At.After(time.Now()))) {
				t.Fatalf("limit %d: funding %d at %s (asked from %s)", limit, i, e.At, started)
			}
		}
		if limit == 1 {
			t.Logf("%d fundings in %d pages of 1: %s", len(got), pages+1, kinds(got))
		}
	}
	if _, _, err := n.Fundings(ctx, "acme", 0, 0); err == nil {
		t.Fatal("limit 0 accepted")
	}
	if es, next, err := n.Fundings(ctx, "nobody", 0, 10); err != nil || len(es) != 0 || next != 0 {
		t.Fatalf("an org without fundings: %v %d %v", es, next, err)
	}
}

func kinds(es []ledger.Entry) string {
	var s []string
	for _, e := range es {
		s = append(s, fmt.Sprintf("%s %s %s@%d", e.Kind, e.Key, e.Amount, e.Seq))
	}
	return strings.Join(s, ", ")
}
