package cas

// hookPoint names a point in a write where a test may stop a child process
// (kill -9 tests in crash_test.go). In production testHookFn is nil.
type hookPoint int

const (
	hookChunkWritten   hookPoint = iota // a chunk's temp file is written, not yet fsynced or linked
	hookChunkStored                     // a chunk is linked under its digest
	hookManifestStored                  // a manifest is stored, its ref not yet written
	hookRefStored                       // a ref is written
)

var testHookFn func(hookPoint)

func testHook(p hookPoint) {
	if testHookFn != nil {
		testHookFn(p)
	}
}
