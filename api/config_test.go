package api

import (
	"github.com/creditgate/creditgate/configs"
	"github.com/creditgate/creditgate/gateway"
)

// gatewayConfig is the gateway's configuration on creditgate's defaults
// (configs.Default(), mapped as cmd/creditgate maps it), on a free
// loopback port; the gateway does not default it itself.
func gatewayConfig() gateway.Config {
	d := configs.Default()
	return gateway.Config{Listen: "127.0.0.1:0", RingTimeout: d.SIP.RingTimeout, ByeTimeout: d.SIP.ByeTimeout,
		MaxCalls: d.SIP.MaxCalls, MaxPending: d.SIP.MaxPending, FailoverTimeout: d.SIP.FailoverTimeout,
		Catalog: &d.Catalog, RatePerSource: d.SIP.RatePerSource, BurstPerSource: d.SIP.BurstPerSource,
		SessionExpires: d.SIP.SessionExpires, MinSE: d.SIP.MinSE, KeepaliveInterval: d.SIP.KeepaliveInterval,
		KeepaliveTimeout: d.SIP.KeepaliveTimeout, MaxCallDuration: d.SIP.MaxCallDuration}
}
