package ledger

import (
	"fmt"
	"slices"
	"sort"
	"time"
)

// loadDirectory reads the users (u/; the orgs must be loaded, users count
// into their licenses), trunks (t/) and toll-free numbers (f/).
func (l *Ledger) loadDirectory() error {
	if err := scan(l.db, []byte("u/"), func(_ []byte, u *User) error {
		l.setUser(u)
		return nil
	}); err != nil {
		return err
	}
	if err := scan(l.db, []byte("t/"), func(_ []byte, t *Trunk) error {
		l.trunks[t.ID] = *t
		return nil
	}); err != nil {
		return err
	}
	return scan(l.db, []byte("f/"), func(_ []byte, tf *TollFree) error {
		l.tollFree[tf.Number] = *tf
		return nil
	})
}

// PutUser creates or replaces a user. Numbers are E.164 digits without '+'.
// The org's minute pools of this month follow its licenses.
func (l *Ledger) PutUser(u User) error {
	u, err := PrepareUser(u) // apply.go: the rules a cluster node checks too
	if err != nil {
		return err
	}
	at := l.opts.Now().UTC()
	_, err = l.do(Op{Kind: "put_user", Org: u.Org, Key: u.ID}, at, func(t *txn) error {
		if err := CheckPutUser(memDirectory{l}, u); err != nil {
			return err
		}
		st := l.orgs[u.Org]
		before := slices.Clone(st.licensed)
		l.setUser(&u)
		t.put(keyUser(u.Org, u.ID), u)
		l.relicense(t, st, before, at)
		return nil
	})
	return err
}

// relicense brings this month's pools of an org in line with its license
// counts after a change from before. Taking licenses away stops new
// minutes, never un-spends old ones (Total = max(licensed, used + held)).
func (l *Ledger) relicense(t *txn, st *orgState, before []int, at time.Time) {
	month := at.In(st.loc).Format("2006-01")
	for i, n := range st.licensed {
		if n == before[i] {
			continue
		}
		p := l.pool(st, i, month)
		p.Licensed = n * l.plans[i].Minutes
		p.Total = max(p.Licensed, p.Used+p.Held)
		t.put(keyPool(p), *p)
	}
}

// DeleteUser removes a user, its numbers and its licenses (this month's
// pools follow, as for PutUser); false if the org has no such user. A user
// with a call up is refused with ErrInUse and nothing changes.
func (l *Ledger) DeleteUser(org, id string) (bool, error) {
	found := false
	at := l.opts.Now().UTC()
	_, err := l.do(Op{Kind: "delete_user", Org: org, Key: id}, at, func(t *txn) error {
		st, ok := l.orgs[org]
		if !ok {
			return fmt.Errorf("%w: %s", ErrUnknownOrg, org)
		}
		key := org + "/" + id
		u, ok := l.users[key]
		if !ok {
			return nil
		}
		if err := l.userBusy(org, id); err != nil {
			return err
		}
		found = true
		before := slices.Clone(st.licensed)
		for _, n := range u.Numbers {
			delete(l.numbers, n)
		}
		l.countLicenses(st, u, -1)
		delete(l.users, key)
		t.del(keyUser(org, id))
		l.relicense(t, st, before, at)
		return nil
	})
	return found, err
}

// UsersOf lists an org's users, sorted by id.
func (l *Ledger) UsersOf(org string) []User {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []User
	for _, u := range l.users {
		if u.Org == org {
			out = append(out, *u)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// setUser replaces a user in memory: its numbers and its org's license counts.
func (l *Ledger) setUser(u *User) {
	key := u.Org + "/" + u.ID
	st := l.orgs[u.Org]
	if old, ok := l.users[key]; ok {
		for _, n := range old.Numbers {
			delete(l.numbers, n)
		}
		if st != nil {
			l.countLicenses(st, old, -1)
		}
	}
	for _, n := range u.Numbers {
		l.numbers[n] = key
	}
	if st != nil {
		l.countLicenses(st, u, +1)
	}
	l.users[key] = u
}

func (l *Ledger) countLicenses(st *orgState, u *User, delta int) {
	for i, p := range l.plans {
		for _, lic := range p.Licenses {
			if slices.Contains(u.Licenses, lic) {
				st.licensed[i] += delta
				break
			}
		}
	}
}

// User returns a user of an org.
func (l *Ledger) User(org, id string) (User, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	u, ok := l.users[org+"/"+id]
	if !ok {
		return User{}, false
	}
	return *u, true
}

// UserByNumber finds who owns an E.164 number.
func (l *Ledger) UserByNumber(e164 string) (User, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	key, ok := l.numbers[e164]
	if !ok {
		return User{}, false
	}
	return *l.users[key], true
}

// PutTollFree assigns a toll-free number (E.164 digits without '+') to an
// org, or moves its delivery trunk. A number of a user, or of another org,
// is refused.
func (l *Ledger) PutTollFree(tf TollFree) error {
	if err := ValidateTollFree(tf); err != nil {
		return err
	}
	_, err := l.do(Op{Kind: "put_toll_free", Org: tf.Org, Key: tf.Number}, l.opts.Now().UTC(), func(t *txn) error {
		if err := CheckPutTollFree(memDirectory{l}, tf); err != nil {
			return err
		}
		l.tollFree[tf.Number] = tf
		t.put(keyTollFree(tf.Number), tf)
		return nil
	})
	return err
}

// DeleteTollFree takes a toll-free number away from its org; false if the
// org did not have it. A number with a call to it up is refused with
// ErrInUse and nothing changes.
func (l *Ledger) DeleteTollFree(org, number string) (bool, error) {
	found := false
	_, err := l.do(Op{Kind: "delete_toll_free", Org: org, Key: number}, l.opts.Now().UTC(), func(t *txn) error {
		if tf, ok := l.tollFree[number]; !ok || tf.Org != org {
			return nil
		}
		if err := l.tollFreeBusy(org, number); err != nil {
			return err
		}
		found = true
		delete(l.tollFree, number)
		t.del(keyTollFree(number))
		return nil
	})
	return found, err
}

// TollFreeOwner finds the org a toll-free number belongs to.
func (l *Ledger) TollFreeOwner(number string) (TollFree, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	tf, ok := l.tollFree[number]
	return tf, ok
}

// TollFreeNumbers lists an org's toll-free numbers, sorted.
func (l *Ledger) TollFreeNumbers(org string) []TollFree {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []TollFree
	for _, tf := range l.tollFree {
		if tf.Org == org {
			out = append(out, tf)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Number < out[j].Number })
	return out
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// PutTrunk creates or replaces a trunk; the gateway validates its fields.
func (l *Ledger) PutTrunk(tr Trunk) error {
	if err := ValidateTrunk(tr); err != nil {
		return err
	}
	_, err := l.do(Op{Kind: "put_trunk", Key: tr.ID}, l.opts.Now().UTC(), func(t *txn) error {
		if err := CheckPutTrunk(memDirectory{l}, tr); err != nil {
			return err
		}
		l.trunks[tr.ID] = tr
		t.put(keyTrunk(tr.ID), tr)
		return nil
	})
	return err
}

// DeleteTrunk removes a trunk; false if there is none. A trunk that
// delivers one of its org's toll-free numbers is refused with ErrInUse
// (move the number first). Whether a call on it is up the gateway knows,
// not the ledger: it asks before.
func (l *Ledger) DeleteTrunk(id string) (bool, error) {
	found := false
	_, err := l.do(Op{Kind: "delete_trunk", Key: id}, l.opts.Now().UTC(), func(t *txn) error {
		if _, ok := l.trunks[id]; !ok {
			return nil
		}
		if err := CheckDeleteTrunk(memDirectory{l}, id); err != nil {
			return err
		}
		found = true
		delete(l.trunks, id)
		t.del(keyTrunk(id))
		return nil
	})
	return found, err
}

// Trunks lists every trunk, sorted by id.
func (l *Ledger) Trunks() []Trunk {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Trunk, 0, len(l.trunks))
	for _, t := range l.trunks {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// PutDeck stores the operator's rate deck (already validated by rating).
func (l *Ledger) PutDeck(csv []byte) error {
	deck := slices.Clone(csv)
	_, err := l.do(Op{Kind: "put_deck"}, l.opts.Now().UTC(), func(t *txn) error {
		l.deck = deck
		t.raw(keyDeck, deck)
		return nil
	})
	return err
}

// Deck returns the stored rate deck, nil if none was uploaded.
func (l *Ledger) Deck() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.deck
}
