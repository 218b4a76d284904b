package ledger

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/mail"
	"net/url"
	"sort"
	"time"

	"github.com/shopspring/decimal"
)

// The outbox holds the notifications an operator's contacts must get (README,
// Funding: recharge succeeded, recharge failed and why, balance reached zero).
// A notification is written in the same durable operation as the event it
// reports, so it cannot be lost, and stays until a sender (package notify)
// has delivered it on every channel; each channel's delivery is recorded
// as it happens, so a restart resends only what was not delivered.

// Notification kinds.
const (
	NotifyRechargeSucceeded = "recharge_succeeded"
	NotifyRechargeFailed    = "recharge_failed"
	NotifyBalanceZero       = "balance_zero"
	NotifyLowBalance        = "low_balance"
	NotifyFraudGuard        = "fraud_guard"
	// NotifyPurchaseFailed: a one-time purchase (purchase.go) was declined.
	NotifyPurchaseFailed = "purchase_failed"
)

// NotificationKinds lists every kind, for metrics and documentation.
var NotificationKinds = []string{NotifyRechargeSucceeded, NotifyRechargeFailed, NotifyBalanceZero, NotifyLowBalance, NotifyFraudGuard,
	NotifyPurchaseFailed}

// Notification is one message to an org's contacts.
type Notification struct {
	ID       string          `json:"id"`
	Org      string          `json:"org"`
	Kind     string          `json:"kind"`
	At       time.Time       `json:"at"`
	Amount   decimal.Decimal `json:"amount"`
	Balance  decimal.Decimal `json:"balance"`
	Currency string          `json:"currency"`
	Purchase string          `json:"purchase,omitempty"`
	Reason   string          `json:"reason,omitempty"`
	// ZeroAt and the burn rate come with a low-balance warning.
	ZeroAt     time.Time       `json:"zero_at,omitzero"`
	BurnPerDay decimal.Decimal `json:"burn_per_day,omitzero"`
	// Emailed and Posted record delivery by email and by webhook.
	Emailed bool `json:"emailed,omitempty"`
	Posted  bool `json:"posted,omitempty"`
}

// Limits of an org's notification settings.
const (
	MaxContacts   = 20
	MaxWebhookURL = 2048
)

// keyNotification orders the outbox by creation.
func keyNotification(seq uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte("n/"), seq)
}

// notify queues n inside operation t.
func (l *Ledger) notify(t *txn, n Notification) {
	seq := t.entrySeq()
	n.ID = fmt.Sprintf("n%016x", seq)
	n.At = t.at.UTC()
	l.outbox[n.ID] = &n
	t.put(keyNotification(seq), n)
	t.wakeOutbox = true
}

// Outbox returns the notifications not yet delivered, oldest first, each
// durable (see PendingPurchases).
func (l *Ledger) Outbox() ([]Notification, error) {
	var ns []Notification
	_, err := l.do(Op{Kind: "outbox"}, l.opts.Now(), func(*txn) error {
		for _, n := range l.outbox {
			ns = append(ns, *n)
		}
		return nil
	})
	sort.Slice(ns, func(i, j int) bool { return ns[i].ID < ns[j].ID })
	return ns, err
}

// OutboxWake is signalled, after the operation is durable, whenever a
// notification is queued.
func (l *Ledger) OutboxWake() <-chan struct{} { return l.outboxWake }

// Delivered records that n went out on the channels it says (Emailed,
// Posted); done removes it from the outbox.
func (l *Ledger) Delivered(n Notification, done bool) error {
	seq, err := notificationSeq(n.ID)
	if err != nil {
		return err
	}
	_, err = l.do(Op{Kind: "delivered", Key: n.ID}, l.opts.Now(), func(t *txn) error {
		cur, ok := l.outbox[n.ID]
		if !ok {
			return nil // delivered already
		}
		if done {
			delete(l.outbox, n.ID)
			t.del(keyNotification(seq))
			return nil
		}
		cur.Emailed = cur.Emailed || n.Emailed
		cur.Posted = cur.Posted || n.Posted
		t.put(keyNotification(seq), *cur)
		return nil
	})
	return err
}

func notificationSeq(id string) (uint64, error) {
	if len(id) != 17 || id[0] != 'n' {
		return 0, invalidf("notification id %q", id)
	}
	b, err := hex.DecodeString(id[1:])
	if err != nil {
		return 0, invalidf("notification id %q", id)
	}
	return binary.BigEndian.Uint64(b), nil
}

func (l *Ledger) loadOutbox() error {
	return scan(l.db, []byte("n/"), func(_ []byte, n *Notification) error {
		l.outbox[n.ID] = n
		return nil
	})
}

// Contacts is where an org's notifications go.
type Contacts struct {
	Emails  []string `json:"emails,omitempty"`
	Webhook string   `json:"webhook,omitempty"`
	// WebhookSecret signs webhook bodies (HMAC-SHA256); never shown back.
	WebhookSecret string `json:"webhook_secret,omitempty"`
}

func (c Contacts) validate() error {
	if len(c.Emails) > MaxContacts {
		return invalidf("emails: at most %d", MaxContacts)
	}
	for _, e := range c.Emails {
		a, err := mail.ParseAddress(e)
		if err != nil || a.Address != e || len(e) > 254 {
			return invalidf("email %q: want a bare address like billing@example.com", e)
		}
	}
	if c.Webhook != "" {
		u, err := url.Parse(c.Webhook)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || len(c.Webhook) > MaxWebhookURL {
			return invalidf("webhook %q: want an http(s) URL", c.Webhook)
		}
		if len(c.WebhookSecret) < 16 || len(c.WebhookSecret) > 256 {
			return invalidf("webhook_secret: want 16 to 256 characters, to sign the webhook's body")
		}
	}
	return nil
}

// SetContacts replaces where the org's notifications go.
func (l *Ledger) SetContacts(org string, c Contacts) (Org, error) {
	if err := c.validate(); err != nil {
		return Org{}, err
	}
	return l.setOrg("contacts", org, func(o *Org) { o.Contacts = c })
}

// OrgIDs lists the orgs.
func (l *Ledger) OrgIDs() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	ids := make([]string, 0, len(l.orgs))
	for id := range l.orgs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// WarnLowBalance queues a low_balance notification for the org from advice
// a, unless one was queued less than every ago; the time of the last one is
// kept with the org, so restarts do not repeat it. It reports whether it
// queued one.
func (l *Ledger) WarnLowBalance(org string, a Advice, now time.Time, every time.Duration) (bool, error) {
	warned := false
	_, err := l.do(Op{Kind: "low_balance", Org: org}, now, func(t *txn) error {
		st, ok := l.orgs[org]
		if !ok {
			return fmt.Errorf("%w: %s", ErrUnknownOrg, org)
		}
		if !st.LowBalanceWarned.IsZero() && now.Sub(st.LowBalanceWarned) < every {
			return nil
		}
		st.LowBalanceWarned = now.UTC()
		t.put(keyOrg(org), st.Org)
		l.notify(t, Notification{Org: org, Kind: NotifyLowBalance, Balance: st.Balance.Sub(st.Held), Currency: st.Currency,
			ZeroAt: a.ZeroAfter(st.Balance.Sub(st.Held), now), BurnPerDay: a.BurnPerDay, Amount: a.Amount})
		warned = true
		return nil
	})
	return warned, err
}
