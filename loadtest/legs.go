package loadtest

import (
	"sort"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
)

// Legs records every SIP leg a run plays, one entry per leg: when it was
// offered and answered, which gateway node served it, and when a BYE for
// it arrived and from where. It is what a test of a node's death needs:
// which calls a node had, who ended each (a survivor's BYE comes from
// another address than the dialog's), and when, to compare with what the
// CDR paid for. Give one to Config.Legs (several runs may share one);
// without it a run records nothing and behaves as before.
//
// Invariant: at most one entry per (side, Call-ID); an entry's times only
// go from zero to set, once (the first BYE is kept; later ones are
// counted in Byes). Guarded by mu, which is a leaf lock: nothing is
// called while it is held.
type Legs struct {
	mu   sync.Mutex
	legs map[legKey]*Leg
}

// Side is which end of a call the load tool played in a leg.
type Side string

// The two sides: the PBX placing the call, the carrier answering it.
const (
	CallerSide  Side = "caller"
	CarrierSide Side = "carrier"
)

type legKey struct {
	side   Side
	callID string
}

// Leg is one leg as the load tool saw it. Times are the load tool's
// time.Now() when the message was sent or arrived.
type Leg struct {
	Side   Side
	CallID string // the leg's SIP Call-ID (the carrier side's is the gateway's call id, "-N" after a failover)
	// Node is the gateway's address in the leg: on the caller side the
	// host:port of the 200 OK's Contact (behind a record-routing proxy
	// still the node's own), on the carrier side the INVITE's packet
	// source.
	Node string
	// Due is when the call was scheduled (caller side; setup latency is
	// Answered − Due, as the Report measures it); Status the INVITE's
	// final answer ("200", "402", "timeout", "error").
	Due    time.Time
	Status string
	// Answered is when the 200 OK arrived (caller) or was sent (carrier,
	// whether or not its ACK ever came).
	Answered time.Time
	// Bye is when the first BYE from the gateway's side arrived, ByeFrom
	// its packet source and ByeVia its Via sent-by values, top first
	// (through a proxy the top one is the proxy's and the next the node
	// that sent it). ByeMatched: it matched the dialog (answered 200, not
	// 481). Byes counts the BYE transactions that arrived.
	Bye        time.Time
	ByeFrom    string
	ByeVia     []string
	ByeMatched bool
	Byes       int
	// HungUp is when this side sent its own BYE (the caller after Hold).
	HungUp time.Time
}

// EndedByGateway: a BYE from the gateway's side arrived and this side had
// not hung up before it.
func (l Leg) EndedByGateway() bool {
	return !l.Bye.IsZero() && (l.HungUp.IsZero() || l.Bye.Before(l.HungUp))
}

// All is a copy of every leg recorded, in order of answer (unanswered
// caller legs by due time), caller side first.
func (ls *Legs) All() []Leg {
	ls.mu.Lock()
	out := make([]Leg, 0, len(ls.legs))
	for _, l := range ls.legs {
		c := *l
		c.ByeVia = append([]string(nil), l.ByeVia...)
		out = append(out, c)
	}
	ls.mu.Unlock()
	at := func(l Leg) time.Time {
		if l.Answered.IsZero() {
			return l.Due
		}
		return l.Answered
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Side != out[j].Side {
			return out[i].Side == CallerSide
		}
		return at(out[i]).Before(at(out[j]))
	})
	return out
}

// Side is every leg recorded on one side, as All orders them.
func (ls *Legs) Side(side Side) []Leg {
	var out []Leg
	for _, l := range ls.All() {
		if l.Side == side {
			out = append(out, l)
		}
	}
	return out
}

// leg is the entry of (side, callID), made on first use; ls.mu held.
func (ls *Legs) leg(side Side, callID string) *Leg {
	if ls.legs == nil {
		ls.legs = map[legKey]*Leg{}
	}
	k := legKey{side, callID}
	l, ok := ls.legs[k]
	if !ok {
		l = &Leg{Side: side, CallID: callID}
		ls.legs[k] = l
	}
	return l
}

// attempted records a caller leg's outcome; nil-safe like every recorder
// below, so the run's code calls them unconditionally.
func (ls *Legs) attempted(callID string, due time.Time, status string) {
	if ls == nil || callID == "" {
		return
	}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	l := ls.leg(CallerSide, callID)
	l.Due, l.Status = due, status
}

// answered records a leg's answer and the node serving it.
func (ls *Legs) answered(side Side, callID, node string, at time.Time) {
	if ls == nil || callID == "" {
		return
	}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	l := ls.leg(side, callID)
	if l.Answered.IsZero() {
		l.Answered, l.Node = at, node
	}
}

// bye records a BYE that arrived in a leg.
func (ls *Legs) bye(side Side, req *sip.Request, at time.Time, matched bool) {
	if ls == nil || req.CallID() == nil {
		return
	}
	var via []string
	for _, h := range req.GetHeaders("via") {
		if v, ok := h.(*sip.ViaHeader); ok {
			via = append(via, v.SentBy())
		}
	}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	l := ls.leg(side, req.CallID().Value())
	l.Byes++
	if l.Bye.IsZero() {
		l.Bye, l.ByeFrom, l.ByeVia, l.ByeMatched = at, req.Source(), via, matched
	}
}

// hungUp records this side's own BYE.
func (ls *Legs) hungUp(side Side, callID string, at time.Time) {
	if ls == nil || callID == "" {
		return
	}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	l := ls.leg(side, callID)
	if l.HungUp.IsZero() {
		l.HungUp = at
	}
}

// contactHostPort is the host:port of a message's Contact, "" without one.
func contactHostPort(m interface{ Contact() *sip.ContactHeader }) string {
	c := m.Contact()
	if c == nil {
		return ""
	}
	return c.Address.HostPort()
}

// drain waits, at most timeout, until every carrier leg the run answered
// has ended. The caller's BYE is answered by the gateway before the
// gateway's BYE reaches the carrier, so a run that closed its carrier
// socket as soon as its last caller was done would miss the last calls'
// carrier BYEs; a run recording Legs waits for them (without Legs, Run
// ends as it always has).
func (c *carrier) drain(timeout time.Duration) {
	for deadline := time.Now().Add(timeout); c.up.Load() > 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
}
