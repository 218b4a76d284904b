// Paging a merge of several nodes' histories (the audit trail,
// cluster_audit.go; an org's transactions, cluster_transactions.go): one
// cursor format and one merge for both.
//
// Each source numbers its own items (a node's ledger sequence numbers; the
// cluster's etcd revisions), so a page of the merge is resumed with one
// position per source: the cursor "n1:412,n2:87" (source names
// query-escaped, comma-separated) says that source n1's items up to 412
// and n2's up to 87 were given; a source it does not name starts from its
// first item. Within a page items are merged by time (then source name,
// then number), each source's in its own order; so every item of every
// source that answered is given exactly once over the pages, and the page
// order is by time except across a page break (a source's next items may
// be older than the previous page's last).
//
// Each source is asked for up to limit items after its position; a page
// stops after limit items, or where a source that has more ran out of
// what it sent (so the merge never skips past one of its items). A source
// that does not answer is named in "unavailable" and keeps its position in
// next_after, so its items are given on a later page once it is back.

package api

import (
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// maxCursorNodes bounds the positions one cursor may carry.
const maxCursorNodes = 1000

// parseCursor reads a cluster cursor: "source:position" pairs,
// comma-separated.
func parseCursor(v string) (map[string]uint64, error) {
	cur := map[string]uint64{}
	if v == "" {
		return cur, nil
	}
	parts := strings.Split(v, ",")
	if len(parts) > maxCursorNodes {
		return nil, badRequest("after: at most %d nodes", maxCursorNodes)
	}
	for _, p := range parts {
		n, s, ok := strings.Cut(p, ":")
		node, err := url.QueryUnescape(n)
		if !ok || err != nil || node == "" {
			return nil, badRequest("after=%q: in cluster mode, the next_after of the previous page (node:seq,…)", v)
		}
		seq, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return nil, badRequest("after=%q: %q is not a seq", v, s)
		}
		cur[node] = seq
	}
	return cur, nil
}

// formatCursor writes a cursor, sources in order.
func formatCursor(cur map[string]uint64) string {
	nodes := make([]string, 0, len(cur))
	for n := range cur {
		nodes = append(nodes, n)
	}
	slices.Sort(nodes)
	var b strings.Builder
	for i, n := range nodes {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(url.QueryEscape(n))
		b.WriteByte(':')
		b.WriteString(strconv.FormatUint(cur[n], 10))
	}
	return b.String()
}

// pageSource is one source's page: its items in its own order (rising
// positions), and next, its cursor when it has more (0: none).
type pageSource[T any] struct {
	node  string
	items []T
	next  uint64
}

// mergePages takes up to limit items from the sources by (time, source,
// position), each source in its own order, gives each to emit with its
// source's name, and moves cur to what was taken. It stops early where a
// source that has more ran out of items (its position moves to its next).
// more: some source has items not given.
func mergePages[T any](sources []pageSource[T], cur map[string]uint64, limit int, place func(T) (time.Time, uint64),
	emit func(node string, item T)) (more bool) {
	pos := make([]int, len(sources))
	for given := 0; given < limit; given++ {
		best := -1
		var bestAt time.Time
		var bestPos uint64
		for i, src := range sources {
			if pos[i] == len(src.items) {
				if src.next != 0 {
					// Its next item is unknown and may be older than
					// any other's: the page ends here.
					cur[src.node] = max(cur[src.node], src.next)
					return true
				}
				continue
			}
			at, p := place(src.items[pos[i]])
			if best < 0 || earlier(src.node, at, p, sources[best].node, bestAt, bestPos) {
				best, bestAt, bestPos = i, at, p
			}
		}
		if best < 0 {
			return false
		}
		item := sources[best].items[pos[best]]
		pos[best]++
		cur[sources[best].node] = bestPos
		emit(sources[best].node, item)
	}
	for i, src := range sources {
		if pos[i] < len(src.items) || src.next != 0 {
			return true
		}
	}
	return false
}

// earlier orders items of a merge: by time, then source, then position.
func earlier(na string, atA time.Time, pa uint64, nb string, atB time.Time, pb uint64) bool {
	if c := atA.Compare(atB); c != 0 {
		return c < 0
	}
	if na != nb {
		return na < nb
	}
	return pa < pb
}
