// What the console reads from the API: the JSON it answers (README, Admin
// API; api/views.go), decoded into what the templates show. Money stays the
// API's decimal strings with the currency beside it.

package console

import (
	"net/url"
	"time"
)

type org struct {
	ID            string    `json:"id"`
	Name          string    `json:"name"`
	Country       string    `json:"country"`
	Region        string    `json:"region"`
	BillingRegion string    `json:"billing_region"`
	Currency      string    `json:"currency"`
	Balance       string    `json:"balance"`
	Available     string    `json:"available"`
	Held          string    `json:"held"`
	Timezone      string    `json:"timezone"`
	Pools         []pool    `json:"pools"`
	CreatedAt     time.Time `json:"created_at"`
	AutoRecharge  struct {
		Enabled       bool   `json:"enabled"`
		Threshold     string `json:"threshold"`
		Amount        string `json:"amount"`
		PaymentMethod string `json:"payment_method"`
		Customer      string `json:"customer"`
		Suspended     string `json:"suspended"`
		Pending       string `json:"pending"`
	} `json:"auto_recharge"`
	Contacts struct {
		Emails        []string `json:"emails"`
		Webhook       string   `json:"webhook"`
		WebhookSigned bool     `json:"webhook_signed"`
	} `json:"contacts"`
	Forecast *forecast `json:"forecast"`
}

type pool struct {
	Plan      string `json:"plan"`
	Month     string `json:"month"`
	Total     int    `json:"total"`
	Used      int    `json:"used"`
	Available int    `json:"available"`
}

type forecast struct {
	Days               int        `json:"days"`
	BurnPerDay         string     `json:"burn_per_day"`
	P95Day             string     `json:"p95_day"`
	ZeroAt             *time.Time `json:"zero_at"`
	SuggestedThreshold string     `json:"suggested_threshold"`
	SuggestedAmount    string     `json:"suggested_amount"`
}

type orgSummary struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	Country   string `json:"country"`
	Region    string `json:"region"`
	Currency  string `json:"currency"`
	Balance   string `json:"balance"`
	Available string `json:"available"`
	Held      string `json:"held"`
}

type user struct {
	ID       string   `json:"id"`
	Numbers  []string `json:"numbers"`
	Licenses []string `json:"licenses"`
}

// Has says whether the user holds license l (for the templates).
func (u user) Has(l string) bool {
	for _, x := range u.Licenses {
		if x == l {
			return true
		}
	}
	return false
}

type liveCall struct {
	ID         string    `json:"id"`
	Org        string    `json:"org"`
	User       string    `json:"user"`
	From       string    `json:"from"`
	To         string    `json:"to"`
	Direction  string    `json:"direction"`
	State      string    `json:"state"`
	Start      time.Time `json:"start"`
	Answer     time.Time `json:"answer"`
	PaidFrom   string    `json:"paid_from"`
	RatePerMin string    `json:"rate_per_minute"`
}

// purchase is a one-time purchase (POST /v1/orgs/{org}/purchases).
type purchase struct {
	ID       string `json:"id"`
	Org      string `json:"org"`
	Amount   string `json:"amount"`
	Currency string `json:"currency"`
	State    string `json:"state"`
	Reason   string `json:"reason"`
}

type auditEntry struct {
	Seq    uint64    `json:"seq"`
	At     time.Time `json:"at"`
	KeyID  string    `json:"key_id"`
	Role   string    `json:"role"`
	Org    string    `json:"org"`
	Kind   string    `json:"kind"`
	Action string    `json:"action"`
	Target string    `json:"target"`
	Before any       `json:"before"`
	After  any       `json:"after"`
	Via    string    `json:"via"`
}

// getOrg is GET /v1/orgs/{org} as the session's key.
func (c *Console) getOrg(s *session, id string) (org, error) {
	var o org
	err := c.do(s, "GET", "/v1/orgs/"+url.PathEscape(id), nil, &o)
	return o, err
}

// users is every user of the org, page by page.
func (c *Console) users(s *session, orgID string) ([]user, error) {
	var all []user
	after := ""
	for {
		var page struct {
			Users     []user `json:"users"`
			NextAfter string `json:"next_after"`
		}
		q := url.Values{"limit": {"10000"}}
		if after != "" {
			q.Set("after", after)
		}
		if err := c.do(s, "GET", "/v1/orgs/"+url.PathEscape(orgID)+"/users?"+q.Encode(), nil, &page); err != nil {
			return nil, err
		}
		all = append(all, page.Users...)
		if page.NextAfter == "" || len(all) > 1_000_000 {
			return all, nil
		}
		after = page.NextAfter
	}
}

// user is one user of the org as the API has it now.
func (c *Console) user(s *session, orgID, id string) (user, error) {
	us, err := c.users(s, orgID)
	if err != nil {
		return user{}, err
	}
	for _, u := range us {
		if u.ID == id {
			return u, nil
		}
	}
	return user{}, &apiError{Status: 404, Code: "not_found", Message: "org " + orgID + " has no user " + id}
}

// calls is the calls up that the session's key may see (the API filters
// them by the key's org); org, when set, keeps that org's only.
func (c *Console) calls(s *session, orgID string) ([]liveCall, error) {
	var out struct {
		Calls []liveCall `json:"calls"`
	}
	if err := c.do(s, "GET", "/v1/calls", nil, &out); err != nil {
		return nil, err
	}
	if orgID == "" {
		return out.Calls, nil
	}
	mine := out.Calls[:0]
	for _, cl := range out.Calls {
		if cl.Org == orgID {
			mine = append(mine, cl)
		}
	}
	return mine, nil
}
