package rating

import (
	"strings"
	"sync"
)

// normalized remembers what Normalize answered. libphonenumber's parse is
// regular-expression work, about 15 µs — at a few thousand calls/s the
// largest cost of deciding a call — while the numbers seen repeat: a PBX's
// users are few, and so are the destinations most of its calls go to. The
// answer depends on nothing but (dialled, country), so it never goes stale.
var normalized = newNumberCache(1 << 15)

type numberKey struct{ dialled, iso string }

type numberAnswer struct {
	e164 string
	err  error
}

// numberCache holds at most 2×size answers in two generations: lookups hit
// either, new answers go into the current one, and when it is full the
// older generation is dropped whole. Numbers in steady use survive (a hit
// in the old generation is copied forward); a scan of one-off numbers
// cannot grow memory.
type numberCache struct {
	mu        sync.Mutex
	size      int
	cur, prev map[numberKey]numberAnswer
}

func newNumberCache(size int) *numberCache {
	return &numberCache{size: size, cur: make(map[numberKey]numberAnswer, size)}
}

func (c *numberCache) get(dialled, iso string) (string, error) {
	// Keys of unbounded length would let one caller pin memory; such
	// input is refused by normalize anyway.
	if len(dialled) > 64 || len(iso) > 8 {
		return normalize(dialled, iso)
	}
	k := numberKey{dialled, iso}
	c.mu.Lock()
	a, ok := c.cur[k]
	if !ok {
		if a, ok = c.prev[k]; ok {
			c.putLocked(k, a)
		}
	}
	c.mu.Unlock()
	if ok {
		return a.e164, a.err
	}
	e164, err := normalize(dialled, iso)
	// The strings may be slices of a whole SIP message; a key of its own
	// keeps the cache from pinning the message.
	k = numberKey{strings.Clone(dialled), strings.Clone(iso)}
	c.mu.Lock()
	c.putLocked(k, numberAnswer{e164, err})
	c.mu.Unlock()
	return e164, err
}

func (c *numberCache) putLocked(k numberKey, a numberAnswer) {
	if len(c.cur) >= c.size {
		c.prev, c.cur = c.cur, make(map[numberKey]numberAnswer, c.size)
	}
	c.cur[k] = a
}

func (c *numberCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.cur) + len(c.prev)
}
