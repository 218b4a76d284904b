package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// The two start-up failures a new operator meets first, said so that
// nothing is left to guess: which thing is taken, by whom if we can know,
// and which flag or key to change.

// pidFile names the process holding a data directory's store. It is
// written once the store's lock is held and removed at exit; a stale one
// (after kill -9) is only ever read to name a suspect, never trusted.
const pidFile = "creditgate.pid"

// storeLocked explains a failure to open the ledger because another
// process holds its lock (Pebble's flock: EAGAIN).
func storeLocked(dataDir string, err error) error {
	if !errors.Is(err, syscall.EAGAIN) && !errors.Is(err, syscall.EWOULDBLOCK) {
		return err
	}
	who := "another creditgate"
	if b, rerr := os.ReadFile(filepath.Join(dataDir, pidFile)); rerr == nil {
		if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
			who = fmt.Sprintf("another creditgate (pid %d)", pid)
		}
	}
	return fmt.Errorf("the data directory %s is in use by %s: stop it, or start this one with another --data-dir (data_dir)", dataDir, who)
}

// writePID records this process as the store's holder; the returned
// function removes the record.
func writePID(dataDir string) func() {
	p := filepath.Join(dataDir, pidFile)
	if err := os.WriteFile(p, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		return func() {}
	}
	return func() { _ = os.Remove(p) }
}

// addrInUse explains a listen failure because the address is taken.
func addrInUse(what, addr, flagName, key string, err error) error {
	if !errors.Is(err, syscall.EADDRINUSE) {
		return err
	}
	change := key
	if flagName != "" {
		change = "--" + flagName + " (" + key + ")"
	}
	return fmt.Errorf("%s address %s is in use (another creditgate, or another server, listens there): stop it, or choose another with %s", what, addr, change)
}
