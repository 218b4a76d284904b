package etcdtest

import "go.uber.org/zap"

// nopLogger keeps the etcd client's own logging (zap) out of test output.
func nopLogger() *zap.Logger { return zap.NewNop() }
