"""Feature tracks for the track loss: SIFT keypoints (and optionally optical flow) matched across
the training views and chained into tracks. The stages, in pipeline order: features, flow,
chaining, build (see build.py); `dataio.tracks.build.build_tracks` is the entry point."""
