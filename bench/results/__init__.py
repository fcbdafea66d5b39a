"""Reading what finished jobs measured: reports, plots and the statistics behind them."""
