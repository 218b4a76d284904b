// The web console's place on the admin listener: /console and /console/...
// go to the console's handler before the bearer check, because the console
// signs its users in with a session cookie of its own and calls this API
// back, in process, with their key (package console).

package api

import (
	"strings"

	"github.com/valyala/fasthttp"
)

// SetConsole serves the web console under /console; nil (the default)
// leaves those paths to the API, which answers 401/404 like any other.
// Call it before Serve.
func (s *Server) SetConsole(h fasthttp.RequestHandler) { s.console = h }

// consolePath says whether path is the console's.
func consolePath(path string) bool {
	return path == "/console" || strings.HasPrefix(path, "/console/")
}
