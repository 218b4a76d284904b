package cluster

import (
	"fmt"
	"strings"
)

// The key layout, under Config.Prefix (e.g. "/creditgate/"):
//
//	epoch                    the last epoch handed out (a counter)
//	members/<epoch>          node id; bound to the node's lease (the fence)
//	accounts/<org>           {funded, unallocated, spent}, decimal strings
//	fundings/<org>/<key>     one funding's amount (idempotency record)
//	slices/<node>/<org>      a slice: {id, epoch, granted, spent, moves, last_move}
//	reclaims/<slice id>      who reclaimed a dead node's slice, and how much
//	charges/<org>/<key>      one Charge (a restarted node's settlement), once per key
//	pools/<org>/<plan>/<month>             a minute pool: {total, unallocated, used}
//	poolslices/<node>/<org>/<plan>/<month> a node's part of it: {granted, used} (pools.go)
//	singleton/<name>         the leader of a singleton (payer, notifier), on its lease (singleton.go)
//	purchases/<org>/<id>, pending/<org>/<id>, recharging/<org>, purchasekeys/<org>/<key>
//	                         purchases (purchases.go)
//	outbox/<id>, lowwarned/<org>, zeroed/<org>
//	                         notifications (notifier.go)
//	takeover/<node>/<epoch>/<call>         an answered call's takeover record (takeover.go)
//	reaps/<node>/<epoch>     the claim on a dead incarnation's takeover (reap_claim.go)
//	guard/<org>/<node>, guardtrips/<org>/<guard>
//	                         fraud-guard figures on the node's lease, last fraud_guard queued (guard.go)
type keys struct{ prefix string }

func (k keys) epoch() string             { return k.prefix + "epoch" }
func (k keys) member(epoch int64) string { return fmt.Sprintf("%smembers/%020d", k.prefix, epoch) }
func (k keys) account(org string) string { return k.prefix + "accounts/" + org }
func (k keys) accounts() string          { return k.prefix + "accounts/" }
func (k keys) funding(org, key string) string {
	return k.prefix + "fundings/" + org + "/" + key
}
func (k keys) fundings() string              { return k.prefix + "fundings/" }
func (k keys) slice(node, org string) string { return k.prefix + "slices/" + node + "/" + org }
func (k keys) slicesOf(node string) string   { return k.prefix + "slices/" + node + "/" }
func (k keys) slices() string                { return k.prefix + "slices/" }
func (k keys) reclaim(sliceID string) string { return k.prefix + "reclaims/" + sliceID }
func (k keys) poolAccount(org, plan, month string) string {
	return k.prefix + "pools/" + org + "/" + plan + "/" + month
}
func (k keys) pools() string { return k.prefix + "pools/" }
func (k keys) poolSlice(node, org, plan, month string) string {
	return k.prefix + "poolslices/" + node + "/" + org + "/" + plan + "/" + month
}
func (k keys) poolSlices() string { return k.prefix + "poolslices/" }
func (k keys) takeover(node string, epoch int64, call string) string {
	return k.takeoverOf(node, epoch) + call
}
func (k keys) takeoverOf(node string, epoch int64) string {
	return fmt.Sprintf("%stakeover/%s/%020d/", k.prefix, node, epoch)
}
func (k keys) takeovers() string { return k.prefix + "takeover/" }
func (k keys) reap(node string, epoch int64) string {
	return fmt.Sprintf("%sreaps/%s/%020d", k.prefix, node, epoch)
}
func (k keys) members() string { return k.prefix + "members/" }

// validID refuses what would break the key layout: empty ids, '/', and ids
// long enough to bloat every key.
func validID(what, id string) error {
	if id == "" || len(id) > 128 || strings.ContainsAny(id, "/\x00") {
		return fmt.Errorf("%s %q: %w", what, id, ErrInvalid)
	}
	return nil
}
