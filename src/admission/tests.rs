//! Tests of the admission step.
