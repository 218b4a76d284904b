package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// DemoConfig is a demo: one short call through a running gateway, set up
// and placed by the load tool, for a first look at what the gateway does.
type DemoConfig struct {
	API   string // the admin API's base URL, e.g. http://127.0.0.1:8080
	Token string // its bearer token
	SIP   string // the gateway's SIP address, host:port
	// Hold is how long the call talks before the caller hangs up.
	Hold time.Duration
	Out  io.Writer
}

// The demo's fixtures, chosen not to collide with the README's own
// examples: org "demo", its user on a number of its own, a customer trunk
// for the demo caller's exact address and a carrier trunk for the one
// number it dials (the longest prefix wins, so other routes are untouched).
const (
	demoOrg    = "demo"
	demoCaller = "+12125550142"
	demoDial   = "+33142278186"
)

// Demo provisions org "demo" on the gateway (again harmlessly if it
// exists), places one call of cfg.Hold through it with the load tool at
// both ends, and prints what happened: the call while it is up, its CDR,
// and the org's balance.
func Demo(ctx context.Context, cfg DemoConfig) error {
	if cfg.Hold <= 0 {
		cfg.Hold = 5 * time.Second
	}
	c := &demoClient{base: strings.TrimRight(cfg.API, "/"), token: cfg.Token}
	say := func(format string, args ...any) { fmt.Fprintf(cfg.Out, "demo: "+format+"\n", args...) }
	if err := c.waitReady(ctx, 30*time.Second); err != nil {
		return err
	}
	callerAddr, err := freeUDP()
	if err != nil {
		return err
	}
	carrierAddr, err := freeUDP()
	if err != nil {
		return err
	}
	if err := c.provision(ctx, callerAddr, carrierAddr); err != nil {
		return err
	}
	say("org %q funded (50.00 once, idempotent); caller %s on trunk demo-pbx from %s; carrier trunk demo-carrier answers %s at %s",
		demoOrg, demoCaller, callerAddr, demoDial, carrierAddr)
	say("calling %s from %s for %s through %s ...", demoDial, demoCaller, cfg.Hold, cfg.SIP)

	// The call runs in the background; meanwhile the gateway's view of it.
	type result struct {
		rep Report
		err error
	}
	done := make(chan result, 1)
	go func() {
		rep, err := Run(ctx, Config{Target: cfg.SIP, Caller: callerAddr, Carrier: carrierAddr, Rate: 1, Calls: 1,
			Hold: cfg.Hold, Dialled: demoDial, From: []string{demoCaller}, SetupTimeout: 10 * time.Second}, nil)
		done <- result{rep, err}
	}()
	callID := c.watchCall(ctx, say)
	r := <-done
	if r.err != nil {
		return fmt.Errorf("demo call: %w", r.err)
	}
	if r.rep.Answered != 1 {
		return fmt.Errorf("demo call not answered: final answers %v (is %s priced in the deck, and the gateway's log quiet?)", r.rep.ByStatus, demoDial)
	}
	say("answered %.0f ms after the INVITE; the caller hung up after %s", r.rep.SetupMS.Max, cfg.Hold)
	return c.report(ctx, callID, say)
}

// provision creates (or finds) org demo, its funding, caller and trunks.
func (c *demoClient) provision(ctx context.Context, callerAddr, carrierAddr string) error {
	steps := []struct {
		method, path, body string
		ok                 []int
	}{
		{"POST", "/v1/orgs", `{"id":"demo","name":"Demo","country":"US","region":"us"}`, []int{201, 409}},
		{"POST", "/v1/orgs/demo/credits", `{"amount":"50.00","idempotency_key":"demo-funding"}`, []int{200, 201}},
		{"PUT", "/v1/orgs/demo/users/demo-user", `{"numbers":["` + demoCaller + `"],"licenses":["communications_credits"]}`, []int{200}},
		{"PUT", "/v1/trunks/demo-pbx", fmt.Sprintf(`{"kind":"customer","org":"demo","addresses":[%q]}`, callerAddr), []int{200}},
		{"PUT", "/v1/trunks/demo-carrier", fmt.Sprintf(`{"kind":"carrier","uri":"sip:%s","prefixes":[%q]}`, carrierAddr, strings.TrimPrefix(demoDial, "+")), []int{200}},
	}
	for _, s := range steps {
		if _, err := c.do(ctx, s.method, s.path, s.body, s.ok...); err != nil {
			return err
		}
	}
	return nil
}

// watchCall waits (up to 10 s) for the demo's call to be answered, prints
// the gateway's view of it, and returns its id ("" if it never showed).
func (c *demoClient) watchCall(ctx context.Context, say func(string, ...any)) string {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var up struct {
			Calls []map[string]any `json:"calls"`
		}
		b, err := c.do(ctx, "GET", "/v1/calls", "", 200)
		if err != nil || json.Unmarshal(b, &up) != nil {
			continue
		}
		for _, call := range up.Calls {
			if call["org"] == demoOrg && call["state"] == "answered" {
				id, _ := call["id"].(string)
				line, _ := json.Marshal(call)
				say("up now (GET /v1/calls): %s", line)
				say("to end it from outside: curl -XDELETE -H \"Authorization: Bearer $TOKEN\" %s/v1/calls/%s", c.base, id)
				return id
			}
		}
	}
	return ""
}

// report prints the call's CDR (once settled) and the org's money.
func (c *demoClient) report(ctx context.Context, callID string, say func(string, ...any)) error {
	var cdr map[string]any
	for deadline := time.Now().Add(5 * time.Second); cdr == nil && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var usage struct {
			CDRs []map[string]any `json:"cdrs"`
		}
		if b, err := c.do(ctx, "GET", "/v1/orgs/demo/usage", "", 200); err == nil && json.Unmarshal(b, &usage) == nil {
			for _, u := range usage.CDRs {
				if u["call_id"] == callID || (callID == "" && len(usage.CDRs) > 0) {
					cdr = u
				}
			}
		}
	}
	if cdr == nil {
		return errors.New("demo: the call's CDR did not appear")
	}
	say("CDR: call_id=%v from=%v to=%v (%v) billed_s=%v rate_per_minute=%v charge=%v %v disconnect_reason=%v",
		cdr["call_id"], cdr["from"], cdr["to"], cdr["destination"], cdr["billed_s"], cdr["rate_per_minute"], cdr["charge"], cdr["currency"], cdr["disconnect_reason"])
	var org struct{ Balance, Available, Held string }
	b, err := c.do(ctx, "GET", "/v1/orgs/demo", "", 200)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &org); err != nil {
		return fmt.Errorf("demo: org: %w", err)
	}
	say("org demo: balance %s, available %s, held %s", org.Balance, org.Available, org.Held)
	return nil
}

type demoClient struct{ base, token string }

func (c *demoClient) do(ctx context.Context, method, path, body string, ok ...int) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, bytes.NewBufferString(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	for _, s := range ok {
		if res.StatusCode == s {
			return b, nil
		}
	}
	return nil, fmt.Errorf("%s %s: %d %s", method, path, res.StatusCode, bytes.TrimSpace(b))
}

func (c *demoClient) waitReady(ctx context.Context, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		_, err := c.do(ctx, "GET", "/readyz", "", 200)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("the gateway's admin API at %s is not ready (is `creditgate serve` running?): %w", c.base, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// freeUDP is a loopback UDP address free now, for a side of the call.
func freeUDP() (string, error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer pc.Close()
	return pc.LocalAddr().String(), nil
}
