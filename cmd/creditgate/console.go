package main

import (
	"log/slog"
	"time"

	"github.com/creditgate/creditgate/api"
	"github.com/creditgate/creditgate/configs"
	"github.com/creditgate/creditgate/console"
	"github.com/prometheus/client_golang/prometheus"
)

// mountConsole serves the web console on the admin listener when
// http.console.enabled (the default).
func mountConsole(cfg configs.Config, srv *api.Server, reg prometheus.Gatherer, log *slog.Logger) error {
	cc := cfg.HTTP.Console
	if !cc.Enabled {
		return nil
	}
	c, err := console.New(console.Config{API: srv.Handle, Gatherer: reg, Now: time.Now, Log: log.With("component", "console"),
		SessionTTL: cc.SessionTTL, MaxSessions: cc.MaxSessions, SecureCookie: cc.SecureCookie || cfg.HTTP.TLSCert != "",
		FundingMinimum: cfg.MinFunding()})
	if err != nil {
		return err
	}
	srv.SetConsole(c.Handle)
	return nil
}
