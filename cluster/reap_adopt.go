// The reaper's CDRs: adopted into the claimer's ledger as pending, then
// named in etcd, then kept — so that of a dead node's call exactly one
// CDR counts, whichever reaper dies at whichever point (issue 17).

package cluster

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/ledger"
)

// reapCrashAt, when set (tests only), runs at the points of a reap's
// adoption where a crash matters — "adopted" (the CDRs in the local
// ledger, the claim not naming it yet) and "named" (the claim step
// landed, the pending mark not yet confirmed); an error it returns ends the
// reap there, as a crash at that point would.
var reapCrashAt func(point string, c incarnation) error

// adoptTag names a reap's adoption in this node's ledger: the dead
// incarnation and the adopting one ("<node>/<epoch>@<adopter epoch>"; the
// adopter's node id is the ledger's own).
func adoptTag(c incarnation, adopterEpoch int64) string {
	return fmt.Sprintf("%s/%d@%d", c.node, c.epoch, adopterEpoch)
}

func parseAdoptTag(tag string) (c incarnation, adopterEpoch int64, err error) {
	at := strings.LastIndexByte(tag, '@')
	slash := strings.LastIndexByte(tag, '/')
	if at < 0 || slash < 0 || slash > at {
		return c, 0, fmt.Errorf("adoption tag %q: %w", tag, ErrInvalid)
	}
	c.node = tag[:slash]
	if c.epoch, err = strconv.ParseInt(tag[slash+1:at], 10, 64); err != nil {
		return c, 0, fmt.Errorf("adoption tag %q: %w", tag, ErrInvalid)
	}
	if adopterEpoch, err = strconv.ParseInt(tag[at+1:], 10, 64); err != nil {
		return c, 0, fmt.Errorf("adoption tag %q: %w", tag, ErrInvalid)
	}
	return c, adopterEpoch, nil
}

// adopter is how a claim names the incarnation whose adoption counts.
func adopter(node string, epoch int64) string { return fmt.Sprintf("%s/%d", node, epoch) }

// adopt is a reap's step 2. The CDRs of the calls that were up go into
// this node's ledger pending under adoptTag; then the claim step sets
// Adopted and AdoptedBy (this incarnation); then the pending mark is
// confirmed. The CDR of record is the one AdoptedBy names:
//
//   - a claimer that dies before the step lands is taken over; its
//     successor adopts them again (AdoptedBy it), and the dead claimer's
//     pending CDRs are dropped when it starts again (resolveAdoptions);
//   - one that dies after the step landed keeps them: its restart confirms.
//
// Until then a pending CDR shows in its ledger like any other, on at most
// one live node (a claimer whose claim was taken over is fenced).
func (b *Books) adopt(ctx context.Context, c incarnation, cl *claim, recs map[string]*Record,
	step func([]clientv3.Cmp, []clientv3.Op) error) error {
	tag := adoptTag(c, b.n.Epoch())
	me := adopter(b.n.ID(), b.n.Epoch())
	if cl.Adopted {
		if cl.AdoptedBy == me {
			return b.local.ConfirmAdoptions(tag) // a retried reap whose step landed
		}
		return nil
	}
	var cdrs []ledger.CDR
	for id, rc := range cl.Calls {
		if r := recs[id]; rc.Live && r != nil {
			cdrs = append(cdrs, reapCDR(r, rc.End))
		}
	}
	if err := b.local.AdoptCDRsFor(tag, cdrs); err != nil {
		return fmt.Errorf("adopt CDRs: %w", err)
	}
	if h := reapCrashAt; h != nil {
		if err := h("adopted", c); err != nil {
			return err
		}
	}
	cl.Adopted, cl.AdoptedBy = true, me
	if err := step(nil, nil); err != nil {
		cl.Adopted, cl.AdoptedBy = false, ""
		if errors.Is(err, errClaimLost) || errors.Is(err, ErrFenced) {
			// This incarnation's step can never land now: another's
			// adoption is the one of record.
			if derr := b.local.DropAdoptions(tag); derr != nil {
				b.log.Error("cluster reaper: could not drop CDRs adopted under a lost claim; the node's restart drops them", "tag", tag, "error", derr)
			}
		}
		return err
	}
	if h := reapCrashAt; h != nil {
		if err := h("named", c); err != nil {
			return err
		}
	}
	return b.local.ConfirmAdoptions(tag)
}

// resolveAdoptions settles the ledger's pending adoptions from their
// claims: kept where the claim names this node's adopting incarnation,
// dropped where it names another or the adopting incarnation can no
// longer name itself (its member key gone and the claim not Adopted by
// it), left pending while that incarnation still holds the claim and
// might (a step whose outcome is unknown; the reap is tried again). The
// restart calls it before anything else, and the reaper before each scan.
func (b *Books) resolveAdoptions(ctx context.Context) error {
	pend, err := b.local.PendingAdoptions()
	if err != nil || len(pend) == 0 {
		return err
	}
	for tag := range pend {
		c, epoch, err := parseAdoptTag(tag)
		if err != nil {
			return err
		}
		cl, _, err := b.n.readClaim(ctx, b.n.k.reap(c.node, c.epoch))
		if err != nil {
			return err
		}
		me := adopter(b.n.ID(), epoch)
		switch {
		case cl != nil && cl.Adopted && cl.AdoptedBy == me:
			err = b.local.ConfirmAdoptions(tag)
		case cl == nil:
			b.log.Error("cluster reaper: pending adoption of a reap without a claim; left pending", "tag", tag)
			continue
		case epoch == b.n.Epoch() && cl.By == b.n.ID() && cl.ByEpoch == epoch:
			continue // ours still: its reap lands Adopted, or the claim is lost and they go
		default:
			// An earlier incarnation (dead: its steps are fenced) or a
			// claim taken over: this adoption can never be named.
			b.log.Warn("cluster reaper: dropping CDRs adopted for a reap another node's adoption settled", "tag", tag, "calls", len(pend[tag]),
				"adopted_by", cl.AdoptedBy)
			err = b.local.DropAdoptions(tag)
		}
		if err != nil {
			return err
		}
	}
	return nil
}
