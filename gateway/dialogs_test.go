package gateway

import (
	"strings"
	"testing"
)

// TestLegByeFollowsTheRouteSet: a BYE built from a stored leg goes in the
// dialog (Call-ID, our tag in From, theirs in To, CSeq above the last one
// we sent) along the leg's route set, loose or strict (RFC 3261 §12.2.1.1).
func TestLegByeFollowsTheRouteSet(t *testing.T) {
	leg := legState{CallID: "abc@host", From: `"Gateway" <sip:+12125550100@10.0.0.1>;tag=ours`,
		To: `<sip:+33142278186@carrier.example>;tag=theirs`, Target: "sip:ua@192.0.2.7:5070;transport=tcp",
		CSeq: 41, Transport: "TCP"}

	cases := []struct {
		name      string
		route     []string
		ruri      string
		routes    []string
		dest      string // "" when the Request-URI decides
		transport string
	}{
		{name: "no route set", ruri: "sip:ua@192.0.2.7:5070;transport=tcp"},
		{name: "loose routers", route: []string{"<sip:198.51.100.1:5060;lr>", "<sip:198.51.100.2;lr;ftag=x>"},
			ruri: "sip:ua@192.0.2.7:5070;transport=tcp", routes: []string{"sip:198.51.100.1:5060;lr", "sip:198.51.100.2;lr;ftag=x"},
			dest: "198.51.100.1:5060"},
		{name: "strict router", route: []string{"<sip:198.51.100.9:5080>", "<sip:198.51.100.2;lr>"},
			ruri: "sip:198.51.100.9:5080", routes: []string{"sip:198.51.100.2;lr", "sip:ua@192.0.2.7:5070;transport=tcp"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := leg
			l.Route = tc.route
			req, err := l.bye()
			if err != nil {
				t.Fatal(err)
			}
			if got := req.Recipient.String(); got != tc.ruri {
				t.Errorf("Request-URI %s, want %s", got, tc.ruri)
			}
			var routes []string
			for _, h := range req.GetHeaders("Route") {
				routes = append(routes, strings.Trim(h.Value(), "<>"))
			}
			if strings.Join(routes, " ") != strings.Join(tc.routes, " ") {
				t.Errorf("Route %q, want %q", routes, tc.routes)
			}
			if tc.dest != "" && req.Destination() != tc.dest {
				t.Errorf("sent to %s, want %s", req.Destination(), tc.dest)
			}
			if req.CallID().Value() != "abc@host" || req.CSeq().SeqNo != 42 || string(req.CSeq().MethodName) != "BYE" {
				t.Errorf("Call-ID %s CSeq %s", req.CallID().Value(), req.CSeq().Value())
			}
			if tag, _ := req.From().Params.Get("tag"); tag != "ours" || req.From().DisplayName != "Gateway" {
				t.Errorf("From %s", req.From().Value())
			}
			if tag, _ := req.To().Params.Get("tag"); tag != "theirs" {
				t.Errorf("To %s", req.To().Value())
			}
			if req.Transport() != "TCP" {
				t.Errorf("transport %s", req.Transport())
			}
		})
	}
}

func TestLegByeRefusesBrokenRecords(t *testing.T) {
	good := legState{CallID: "c", From: "<sip:a@h>;tag=1", To: "<sip:b@h>;tag=2", Target: "sip:b@192.0.2.1", CSeq: 1}
	for name, mut := range map[string]func(*legState){
		"target": func(l *legState) { l.Target = "not a uri" },
		"from":   func(l *legState) { l.From = "<sip:" },
		"to":     func(l *legState) { l.To = "" },
		"route":  func(l *legState) { l.Route = []string{"<not a uri>"} },
	} {
		l := good
		mut(&l)
		if _, err := l.bye(); err == nil {
			t.Errorf("%s: a broken record built a BYE", name)
		}
	}
	if _, err := good.bye(); err != nil {
		t.Fatalf("the good record: %v", err)
	}
}
