"""Rules shared by serving (`server`) and distillation (`distill`); imports neither."""
