package cluster

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/creditgate/creditgate/api"
	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/payments"
	"github.com/creditgate/creditgate/payments/stripetest"
)

const apiToken = "test-token-0123456789abcdef"

// serveAPI serves the admin API over books with purchases p and the
// access (keys, audit) of a ledger on loopback
// until the test ends, as cmd/creditgate does (no gateway: the purchase
// and org routes do not use it).
func serveAPI(t *testing.T, books ledger.Books, p api.Purchases, access *ledger.Ledger) string {
	t.Helper()
	srv := api.New(books, nil, apiToken, prometheus.NewRegistry(), time.Now, quiet())
	srv.SetAccess(access) // keys and the audit trail: the node's ledger
	srv.SetPayments(true)
	srv.SetPurchases(p)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Shutdown(); <-done })
	return "http://" + ln.Addr().String()
}

type apiAnswer struct {
	status   int
	location string
	body     map[string]any
}

func call(t *testing.T, base, method, path, body string) apiAnswer {
	t.Helper()
	req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+apiToken)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	a := apiAnswer{status: res.StatusCode, location: res.Header.Get("Location")}
	if err := json.Unmarshal(b, &a.body); err != nil {
		t.Fatalf("%s %s: %d %s", method, path, res.StatusCode, b)
	}
	return a
}

// comparable is an answer without what differs between two runs (ids,
// times, the payment's id, the message's wording of a region), with the
// purchase id in the Location replaced.
func comparable(a apiAnswer) map[string]any {
	out := map[string]any{"status": a.status, "has_location": a.location != ""}
	for k, v := range a.body {
		switch k {
		case "id", "created", "closed", "payment":
			out["has_"+k] = v != ""
		case "error":
			if m, ok := v.(map[string]any); ok {
				out["error_code"], out["error_message"] = m["code"], m["message"]
			} else {
				out[k] = v
			}
		default:
			out[k] = v
		}
	}
	return out
}

// TestPurchasesThroughTheAPI: the one-time purchase routes answer the
// same through a cluster node (purchases in etcd, paid by the cluster's
// payer on another node) as through a single node (its ledger and
// payments.Payer): the start (202 and Location), a retry with the same
// key through another node (200, the same purchase), the refusals, the
// outcome, and the org funded once.
func TestPurchasesThroughTheAPI(t *testing.T) {
	srv := stripetest.Start(t)
	ec := etcdtest.Start(t, 1)
	admin := ec.Client()
	defer admin.Close()
	ns := startSNodes(t, ec, 2, sopts{stripeURL: srv.URL})
	setupOrg(t, ns, "50.00", nil)
	clusterA, clusterB := serveAPI(t, ns[0].b, ns[0].p, ns[0].l), serveAPI(t, ns[1].b, ns[1].p, ns[1].l)

	// The single node, as cmd/creditgate runs it without --cluster-etcd.
	l, err := ledger.Open(filepath.Join(t.TempDir(), "single"), ledger.Options{MinFunding: dec("1.00"), Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := l.CreateOrg(ledger.Org{ID: "acme", Name: "Acme", Country: "US", Region: "us", BillingRegion: "us"}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Fund("acme", dec("50.00"), "initial"); err != nil {
		t.Fatal(err)
	}
	payer, err := payments.New(l, payments.Config{APIKey: "sk_test_creditgate", BaseURL: srv.URL, Backoff: 50 * time.Millisecond,
		MaxBackoff: 400 * time.Millisecond, MaxAttempts: 8}, clock.Real{}, nil, quiet())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	payerDone := make(chan struct{})
	go func() { defer close(payerDone); payer.Run(ctx) }()
	defer func() { cancel(); <-payerDone }()
	single := serveAPI(t, l, l, l)
	far := ledger.Org{ID: "far", Name: "Far", Country: "US", Region: "eu", BillingRegion: "us"}
	if _, err := l.CreateOrg(far); err != nil {
		t.Fatal(err)
	}
	if _, err := ns[0].b.CreateOrg(far); err != nil {
		t.Fatal(err)
	}
	eventually(t, "far on every node", func() bool { _, err := ns[1].l.Org("far"); return err == nil })

	start := `{"amount":"60.00","idempotency_key":"buy-1","payment_method":"pm_card_visa","customer":"cus_acme"}`
	steps := []struct {
		name         string
		node         string // the cluster node asked: "a" or "b"
		method, path string
		body         string
	}{
		{"start", "a", "POST", "/v1/orgs/acme/purchases", start},
		{"retry through another node", "b", "POST", "/v1/orgs/acme/purchases", start},
		{"same key, another amount", "b", "POST", "/v1/orgs/acme/purchases",
			`{"amount":"61.00","idempotency_key":"buy-1","payment_method":"pm_card_visa","customer":"cus_acme"}`},
		{"below the minimum", "a", "POST", "/v1/orgs/acme/purchases",
			`{"amount":"0.50","idempotency_key":"buy-2","payment_method":"pm_card_visa"}`},
		{"not a payment method", "a", "POST", "/v1/orgs/acme/purchases",
			`{"amount":"5.00","idempotency_key":"buy-3","payment_method":"visa"}`},
		{"unknown org", "a", "POST", "/v1/orgs/nobody/purchases", start},
		{"regions differ, no incident", "b", "POST", "/v1/orgs/far/purchases", start},
		{"regions differ, an incident", "a", "POST", "/v1/orgs/far/purchases",
			`{"amount":"60.00","idempotency_key":"far-1","payment_method":"pm_card_visa","incident":"INC-7"}`},
		{"unknown purchase", "b", "GET", "/v1/orgs/acme/purchases/acme-p1-000000000000", ""},
	}
	var id string
	for _, st := range steps {
		base := map[string]string{"a": clusterA, "b": clusterB}[st.node]
		got := call(t, base, st.method, st.path, st.body)
		want := call(t, single, st.method, st.path, st.body)
		if st.name == "start" {
			id, _ = got.body["id"].(string)
		}
		if st.name == "retry through another node" && got.body["id"] != id {
			t.Fatalf("retry answered purchase %v, want %s", got.body["id"], id)
		}
		g, w := comparable(got), comparable(want)
		if st.name == "same key, another amount" {
			// The message names the first purchase's id.
			delete(g, "error_message")
			delete(w, "error_message")
		}
		if st.name == "retry through another node" {
			// How far each payer got by now is a race: the outcome is
			// compared below, once both are closed.
			for _, m := range []map[string]any{g, w} {
				delete(m, "state")
				delete(m, "has_payment")
				delete(m, "has_closed")
			}
		}
		gb, _ := json.Marshal(g)
		wb, _ := json.Marshal(w)
		if string(gb) != string(wb) {
			t.Errorf("%s:\ncluster %s\nsingle  %s", st.name, gb, wb)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// The outcome, read through the node that did not start it.
	var got apiAnswer
	took := eventually(t, "the purchase paid", func() bool {
		got = call(t, clusterB, "GET", "/v1/orgs/acme/purchases/"+id, "")
		return got.body["state"] == ledger.PurchaseSucceeded
	})
	t.Logf("one-time purchase paid by the cluster's payer %s after the start", took)
	singleID := ""
	for _, p := range singlePurchases(t, l) {
		singleID = p
	}
	want := call(t, single, "GET", "/v1/orgs/acme/purchases/"+singleID, "")
	for want.body["state"] == ledger.PurchasePending {
		time.Sleep(10 * time.Millisecond)
		want = call(t, single, "GET", "/v1/orgs/acme/purchases/"+singleID, "")
	}
	if g, w := comparable(got), comparable(want); !jsonEqual(g, w) {
		t.Fatalf("outcome:\ncluster %v\nsingle  %v", g, w)
	}
	if a := account(t, admin); !a.Funded.Equal(dec("110")) {
		t.Fatalf("funded %s, want 110", a.Funded)
	}
	// acme's and far's (allowed by its incident), once per installation.
	eventually(t, "far's purchases paid", func() bool { n, _ := srv.Charges(); return n == 4 })
	if n, total := srv.Charges(); n != 4 || total != 24000 {
		t.Fatalf("stripe: %d charges, %d cents; want 2 per installation of 6000", n, total)
	}
	o := call(t, clusterA, "GET", "/v1/orgs/acme", "")
	s := call(t, single, "GET", "/v1/orgs/acme", "")
	if o.body["balance"] != s.body["balance"] || o.body["balance"] != "110.00" {
		t.Fatalf("balance: cluster %v, single %v", o.body["balance"], s.body["balance"])
	}
}

// singlePurchases lists the single node's purchase ids (its one-time
// purchase's key names it).
func singlePurchases(t *testing.T, l *ledger.Ledger) []string {
	t.Helper()
	p, err := l.StartPurchase("acme", dec("60.00"), "buy-1", "pm_card_visa", "cus_acme", "")
	if err != nil || !p.Replayed {
		t.Fatalf("replay of buy-1: %+v %v", p, err)
	}
	return []string{p.ID}
}

func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}
