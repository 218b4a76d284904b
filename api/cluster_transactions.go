// The cluster-wide transactions of an org (cluster.go has the contract of
// every cluster-wide read): GET /v1/orgs/{org}/transactions on any node
// merges this node's entries, every live peer's and the fundings only etcd
// has, each labelled with its source ("node"), paged as cluster_pages.go
// says ("n1:412,n2:87,cluster:9051").
//
// Sources:
//   - each node's ledger: its calls' debits and refunds, and its slice and
//     return entries (money moving between the cluster's unallocated
//     credit in etcd and the node; they are the node's, not the org's, so
//     the merged amounts do not add up to the balance); positions are its
//     ledger's sequence numbers; "balance" is that node's ledger's
//   - ClusterNode ("cluster"): fundings and paid purchases, which land in
//     etcd and in no node's ledger (cluster/fundings_list.go); positions
//     are etcd revisions; "balance" is the cluster's right after it.
//
// A node id is letters, digits, '-', '_' and '.', and "cluster" is refused
// as one (configs), so the label names one source.

package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/valyala/fasthttp"
)

// ClusterNode is the source of the entries only etcd has, in a merged
// transactions list.
const ClusterNode = "cluster"

// ClusterHistory is what a cluster node's books have of an org's history
// beyond its own ledger: its fundings in etcd (cluster.Books). Entries
// are oldest first; Seq is the position (an etcd revision); next is the
// last entry's Seq when more follow, 0 on the last page.
type ClusterHistory interface {
	Fundings(org string, after uint64, limit int) (es []ledger.Entry, next uint64, err error)
}

// nodeEntryView is a transaction with the source whose list it is in.
type nodeEntryView struct {
	entryView
	Node string `json:"node"`
}

// localTransactions is this node's page after after: up to limit entries
// and next, the last one's seq when more follow (0: none).
func (s *Server) localTransactions(org string, after uint64, limit int) ([]entryView, uint64, error) {
	es, err := s.ledger.Transactions(org, after, limit+1)
	if err != nil {
		return nil, 0, err
	}
	var next uint64
	if len(es) > limit {
		es = es[:limit]
		next = es[len(es)-1].Seq
	}
	out := make([]entryView, 0, len(es))
	for _, e := range es {
		out = append(out, viewEntry(e))
	}
	return out, next, nil
}

// clusterTransactions answers the org's transactions for the whole
// cluster: a page of up to limit entries after cursor.
func (s *Server) clusterTransactions(ctx *fasthttp.RequestCtx, org, cursor string, limit int) error {
	f := s.cluster.Load()
	cur, err := parseCursor(cursor)
	if err != nil {
		return err
	}
	es, next, err := s.localTransactions(org, cur[f.self], limit)
	if err != nil {
		return err
	}
	sources := []pageSource[entryView]{{node: f.self, items: es, next: next}}
	unavailable := []Unavailable{}
	if h, ok := s.ledger.(ClusterHistory); ok {
		fs, next, err := h.Fundings(org, cur[ClusterNode], limit)
		if err != nil {
			if !errors.Is(err, ledger.ErrUnavailable) {
				return err
			}
			unavailable = append(unavailable, Unavailable{Node: ClusterNode, Error: err.Error()})
		} else {
			items := make([]entryView, len(fs))
			for i, e := range fs {
				items[i] = viewEntry(e)
			}
			sources = append(sources, pageSource[entryView]{node: ClusterNode, items: items, next: next})
		}
	}
	answers, listErr := s.askPeersEach(ctx, "GET", "/v1/orgs/"+url.PathEscape(org)+"/transactions", func(p Peer) url.Values {
		return url.Values{"limit": {strconv.Itoa(limit)}, "after": {strconv.FormatUint(cur[p.Node], 10)}}
	})
	if listErr != nil {
		unavailable = append(unavailable, Unavailable{Node: "*", Error: "listing the peers: " + listErr.Error()})
	}
	for _, a := range answers {
		var got struct {
			Transactions []entryView `json:"transactions"`
			NextAfter    uint64      `json:"next_after"`
		}
		if a.err == nil && a.status == 200 {
			if err := json.Unmarshal(a.body, &got); err != nil {
				a.err = fmt.Errorf("unreadable answer: %w", err)
			}
		}
		if a.err == nil && a.peer.Node == ClusterNode {
			a.err = fmt.Errorf("a node may not be called %q", ClusterNode)
		}
		if a.err != nil || a.status != 200 {
			unavailable = append(unavailable, Unavailable{Node: a.peer.Node, Error: a.reason()})
			continue
		}
		sources = append(sources, pageSource[entryView]{node: a.peer.Node, items: got.Transactions, next: got.NextAfter})
	}
	out := []nodeEntryView{}
	more := mergePages(sources, cur, limit, entryPlace, func(node string, e entryView) {
		out = append(out, nodeEntryView{entryView: e, Node: node})
	})
	resp := map[string]any{"transactions": out, "unavailable": unavailable}
	if more {
		resp["next_after"] = formatCursor(cur)
	}
	writeJSON(ctx, 200, resp)
	return nil
}

// entryPlace orders transactions in a merge: by time, then position.
func entryPlace(e entryView) (time.Time, uint64) { return e.At, e.Seq }
