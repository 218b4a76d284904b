package api

import (
	"bufio"
	"context"
	"errors"
	"io"

	"github.com/creditgate/creditgate/internal/panics"
	"github.com/valyala/fasthttp"
)

// How a streamed response is produced, bounded and cut short: decided here
// once, for every endpoint that streams.
//
// fasthttp writes a streamed body after the handler has returned, and once
// the client is gone it stops, closes the body stream and recycles the
// RequestCtx for another request. So the producer must never touch ctx
// (the crash of issue 13: ctx.Conn().Close() from the producer, after the
// ctx was released, was a nil-pointer panic that ended the process). Here
// the producer only ever sees the writing end of an io.Pipe whose reading
// end is the response's body stream:
//
//   - A producer error, or a panic in it (contained and counted), closes
//     the pipe with that error. fasthttp's chunked writer then stops
//     without the terminating zero-length chunk and closes the connection:
//     the client sees a truncated body, never one that looks complete.
//   - A client that goes away, or stops reading and is cut by
//     Limits.WriteTimeout, makes fasthttp close the body stream, that is
//     the pipe's reader; the producer's next write fails and it returns.
//   - Shutdown cancels streamCtx, which producers check between rows.
//
// At most Limits.MaxExports producers run at once; past that a request gets
// 503 busy (Retry-After) before anything is read from the store.

// How a streamed export ended, for creditgate_http_exports_total{result}.
const (
	exportCompleted = "completed" // written to the end
	exportAbandoned = "abandoned" // the client went away, or stopped reading and was cut
	exportFailed    = "failed"    // an error or a contained panic on our side cut it short
	exportBusy      = "busy"      // refused: max_exports were running
)

// errStreamPanicked is what the client's body stream ends with when the
// producer panicked.
var errStreamPanicked = errors.New("export failed: internal error")

// stream answers ctx with the bytes produce writes, chunked. what names the
// export in logs. The caller sets the status and headers before.
func (s *Server) stream(ctx *fasthttp.RequestCtx, what string, produce func(context.Context, io.Writer) error) error {
	if s.exports != nil {
		select {
		case s.exports <- struct{}{}:
		default:
			s.exportsDone.WithLabelValues(exportBusy).Inc()
			ctx.Response.Header.Set("Retry-After", "5")
			return errBusy
		}
	}
	pr, pw := io.Pipe()
	s.streams.Add(1)
	go func() {
		defer s.streams.Done()
		defer func() {
			if s.exports != nil {
				<-s.exports
			}
		}()
		defer panics.Recover(s.log, panics.HTTPStream, func() {
			s.exportsDone.WithLabelValues(exportFailed).Inc()
			pw.CloseWithError(errStreamPanicked)
		}, "export", what)
		// Rows are small: gather them so that a pipe hand-off (and a
		// chunk on the wire) carries many.
		bw := bufio.NewWriterSize(pw, 32<<10)
		err := produce(s.streamCtx, bw)
		if err == nil {
			err = bw.Flush()
		}
		switch {
		case err == nil:
			// Complete as far as this side knows; the last bytes may
			// still be cut on their way.
			s.exportsDone.WithLabelValues(exportCompleted).Inc()
			_ = pw.Close()
		case errors.Is(err, io.ErrClosedPipe):
			// The client went away or stopped reading: nothing of ours
			// failed.
			s.exportsDone.WithLabelValues(exportAbandoned).Inc()
			s.log.Debug("export abandoned by the client", "export", what)
		default:
			s.exportsDone.WithLabelValues(exportFailed).Inc()
			s.log.Error("export cut short", "export", what, "error", err)
			pw.CloseWithError(err)
		}
	}()
	ctx.SetBodyStream(pr, -1)
	return nil
}
