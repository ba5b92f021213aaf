"""The review console (`shelver review`): people review the review topic in the browser and their
decisions become `CategoryCorrected` records. app (pages), queue (the group consumer, leases,
commit after delivery), ledger (what to commit, pure), auth (reviewers, CSRF), stats (dashboard
numbers), charts (SVG, pure), cli (the subcommand)."""
