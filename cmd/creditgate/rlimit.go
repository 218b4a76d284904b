package main

import (
	"log/slog"
	"syscall"
)

// raiseFileLimit raises the soft NOFILE limit to the hard one — SIP
// connections, the admin API and the store all take descriptors, and the
// gateway caps SIP at this limit minus sip.reserved_fds — and logs both.
// (Go's runtime does the same at start on Linux; doing it here makes it
// explicit on every platform and puts the figures in the log.)
func raiseFileLimit(log *slog.Logger) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		log.Warn("cannot read the file descriptor limit", "error", err)
		return
	}
	if r.Cur < r.Max {
		soft := r.Cur
		r.Cur = r.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
			log.Warn("cannot raise the soft file descriptor limit to the hard one", "soft", soft, "hard", r.Max, "error", err)
			return
		}
	}
	log.Info("file descriptor limit", "soft", r.Cur, "hard", r.Max)
}
