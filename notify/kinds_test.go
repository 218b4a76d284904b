package notify

import (
	"strings"
	"testing"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/shopspring/decimal"
)

// Every kind the ledger queues has a message of its own: a kind that falls
// to message's default would mail its contacts a bare "creditgate:
// purchase_failed for Acme".
func TestEveryKindHasItsMessage(t *testing.T) {
	o := ledger.Org{ID: "acme", Name: "Acme"}
	for _, kind := range ledger.NotificationKinds {
		n := ledger.Notification{ID: "n0000000000000001", Org: "acme", Kind: kind, At: time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC),
			Amount: decimal.RequireFromString("60"), Balance: decimal.RequireFromString("5"), Currency: "USD",
			Purchase: "acme-p7-0a0b0c0d0e0f", Reason: "generic_decline: Your card was declined."}
		subject, body := message(o, n)
		if strings.HasPrefix(subject, "creditgate: "+kind) || !strings.Contains(body, "acme") {
			t.Errorf("kind %s has no message of its own: %q\n%s", kind, subject, body)
		}
		if kind == ledger.NotifyPurchaseFailed && (!strings.Contains(body, n.Reason) || !strings.Contains(body, "60.00 USD") ||
			!strings.Contains(body, n.Purchase) || strings.Contains(body, "suspended")) {
			t.Errorf("purchase_failed says:\n%s", body)
		}
	}
}
