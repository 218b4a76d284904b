package gateway

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/creditgate/creditgate/internal/panics"
)

// EndLegs ends both legs of a call another cluster node had up and died
// with (cluster mode, issue 17): the surviving node that reaped it sends a
// BYE in each leg from the dialog record the dead node stored with the
// answer (dialogState), exactly as a restarted node ends the calls its last
// run left (endLeftCalls, byeBoth). The BYEs leave from this node's
// address, not the dead node's: carriers and PBXs must accept in-dialog
// requests from every node (access lists), and a TCP or TLS leg gets a
// new connection from here. It returns once both BYEs were answered or
// timed out (sip.bye_timeout); a record that does not parse is an error.
// ctx only bounds the wait for the gateway's own shutdown: the BYEs use
// the gateway's context and timeout.
func (g *Gateway) EndLegs(ctx context.Context, callID string, dialog json.RawMessage) error {
	var st dialogState
	if err := json.Unmarshal(dialog, &st); err != nil {
		return fmt.Errorf("call %s: dialog record: %w", callID, err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	defer panics.Recover(g.log, panics.Call, nil, "call_id", callID)
	g.byeBoth(callID, st)
	return nil
}
