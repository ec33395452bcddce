"""The 'forecast' task: a third-party plugin that forecasts a 1-D series through a Gaussian head."""
