"""A live web page of the catalogue's runs: their maps and decisions, read from the stored runs while they are
written (``nanopilot view``). See :func:`nanopilot.view.app.build_app`."""
