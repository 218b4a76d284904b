package gateway

// TrunkInUse reports whether a call up came in on trunk id or may go out on
// it (one of its carrier routes). The admin API asks before it deletes a
// trunk and refuses the delete while the answer is yes. It is the answer
// of a moment: a call authorized just after goes on with the copy of the
// trunk it was authorized with, and ends as usual.
func (g *Gateway) TrunkInUse(id string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.byTrunk[id] > 0 {
		return true
	}
	for _, c := range g.byID {
		// routes is set before a call is registered and never after.
		for _, r := range c.routes {
			if r.ID == id {
				return true
			}
		}
	}
	return false
}
