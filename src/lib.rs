pub use flint_engine as engine;
pub use flint_models as models;
