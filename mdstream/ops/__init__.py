"""Operations: metrics, health, consumer lag, throttling, routing of table views, `mdstream top`."""
