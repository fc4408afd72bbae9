"""One run, seen from the driver: check and prepare it (`prepare`), create and wire its actors and
speak to them in intents (`actors`), supervise it (restarts, rollback, stop: `supervisor`),
checkpoints and their manifests (`checkpoints`), and report it (`summary`); `fit` ties them together.

May import: `raytf.cluster`, `raytf.data`, `raytf.exchange`, `raytf.replica`, `raytf.pool`, `raytf.observe`, `raytf.config`,
`raytf.runtime`, `raytf.errors`.
"""
