// Anchors the precompiled header target (core/pch.h).
