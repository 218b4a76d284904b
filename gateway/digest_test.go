package gateway

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
)

// dialAuth places a call answering challenges with user/pass (sipgo's own
// digest client); it returns the final status, and the 407 if one was the
// final answer.
func (p *phone) dialAuth(gw, from, to, user, pass string) (int, *sip.Response) {
	p.t.Helper()
	req := newInvite(gw, from, to)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := p.dialogs.WriteInvite(ctx, req)
	must(p.t, err)
	defer sess.Close()
	if err := sess.WaitAnswer(ctx, sipgo.AnswerOptions{Username: user, Password: pass}); err != nil {
		var dr *sipgo.ErrDialogResponse
		if !asDialogResponse(err, &dr) {
			p.t.Fatalf("waiting for answer: %v", err)
		}
		return dr.Res.StatusCode, dr.Res
	}
	must(p.t, sess.Ack(ctx))
	must(p.t, sess.Bye(ctx))
	return 200, nil
}

func TestTrunkDigestAuth(t *testing.T) {
	e := newEnv(t, testDeck)
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	trunk, _ := e.gw.routes.Load().source(e.caller.addr)
	trunk.Username, trunk.Password = "acme-pbx", "s3cret"
	must(t, e.ledger.PutTrunk(trunk))
	e.gw.ReloadTrunks()

	// No credentials: challenged, and nothing reaches the carrier — not
	// even an emergency call, which a real PBX answers the challenge for.
	for _, to := range []string{"+442079460018", "911"} {
		status, res := e.caller.dialAuth(e.gw.Addr(), "+12125550100", to, "", "")
		if status != 407 {
			t.Fatalf("call to %s without credentials: %d, want 407", to, status)
		}
		h := res.GetHeader("Proxy-Authenticate")
		if h == nil {
			t.Fatal("407 without Proxy-Authenticate")
		}
		chal, err := digest.ParseChallenge(h.Value())
		if err != nil || chal.Realm != "creditgate" || chal.Nonce == "" || !chal.SupportsQOP("auth") {
			t.Fatalf("challenge %q: %+v, %v", h.Value(), chal, err)
		}
	}
	if status, _ := e.caller.dialAuth(e.gw.Addr(), "+12125550100", "+442079460018", "acme-pbx", "wrong"); status != 403 {
		t.Fatalf("wrong password: %d, want 403", status)
	}
	if status, _ := e.caller.dialAuth(e.gw.Addr(), "+12125550100", "+442079460018", "someone", "s3cret"); status != 403 {
		t.Fatalf("wrong username: %d, want 403", status)
	}
	if n := e.carrier.invites.Load(); n != 0 {
		t.Fatalf("%d INVITEs reached the carrier without valid credentials", n)
	}
	if status, _ := e.caller.dialAuth(e.gw.Addr(), "+12125550100", "+442079460018", "acme-pbx", "s3cret"); status != 200 {
		t.Fatalf("right credentials: %d, want 200", status)
	}
	eventually(t, "the authenticated call is settled", func() bool { return len(e.cdrs("acme")) == 1 })
}

func TestDigestNonces(t *testing.T) {
	clk := clock.NewFake(epoch)
	d := newDigestAuth("creditgate", clk.Now)
	n := d.nonce()
	if ok, stale := d.fresh(n); !ok || stale {
		t.Fatalf("new nonce: ok=%v stale=%v", ok, stale)
	}
	clk.Advance(nonceTTL - time.Second)
	if ok, stale := d.fresh(n); !ok || stale {
		t.Fatalf("nonce just inside its lifetime: ok=%v stale=%v", ok, stale)
	}
	clk.Advance(2 * time.Second)
	if ok, stale := d.fresh(n); !ok || !stale {
		t.Fatalf("expired nonce: ok=%v stale=%v; want ours but stale", ok, stale)
	}
	other := newDigestAuth("creditgate", clk.Now)
	for _, bad := range []string{"", "x", strings.Repeat("A", 32), other.nonce(), n[:len(n)-2] + "AA"} {
		if ok, _ := d.fresh(bad); ok {
			t.Fatalf("nonce %q accepted; it is not one of ours", bad)
		}
	}

	// A stale nonce in otherwise right credentials gets a new challenge
	// with stale=true, so the PBX retries without asking its user.
	trunk := newTestTrunk("acme-pbx", "s3cret")
	req := sip.NewRequest(sip.INVITE, sip.Uri{Scheme: "sip", User: "442079460018", Host: "127.0.0.1"})
	cred, err := digest.Digest(&digest.Challenge{Realm: "creditgate", Nonce: n, Algorithm: "MD5", QOP: []string{"auth"}},
		digest.Options{Method: "INVITE", URI: req.Recipient.String(), Username: "acme-pbx", Password: "s3cret"})
	must(t, err)
	req.AppendHeader(sip.NewHeader("Proxy-Authorization", cred.String()))
	var chal challengeError
	if err := d.check(req, trunk); !errors.As(err, &chal) || !chal.stale {
		t.Fatalf("stale credentials: %v; want a stale challenge", err)
	}
	clk2 := clock.NewFake(epoch)
	d.now = clk2.Now
	if err := d.check(req, trunk); err != nil {
		t.Fatalf("the same credentials while the nonce is fresh: %v", err)
	}
}

func newTestTrunk(user, pass string) ledger.Trunk {
	return ledger.Trunk{ID: "pbx", Kind: rating.TrunkCustomer, Org: "acme", Addresses: []string{"127.0.0.1"}, Username: user, Password: pass}
}
